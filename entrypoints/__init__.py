"""Process edges: the command line and the GPU worker. They read the settings and build the
connections that everything below them receives as arguments."""
