"""The proxy kernel: a Jupyter kernel whose cells all run on a remote interpreter."""
