"""Package data for refsnn (the embedded MNIST subset); see README.md in this folder."""
