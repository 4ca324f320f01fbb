"""pytest plugin entry point: registers refsnn's hypothesis profiles (``--hypothesis-profile=refsnn-thorough``)."""
from hypothesis import HealthCheck, settings

settings.register_profile("refsnn-ci", max_examples=30, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("refsnn-thorough", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
