"""Hypothesis strategies and assertion helpers to property-test bound implementations against refsnn."""
