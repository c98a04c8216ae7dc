"""Backend adapters: how the gateway talks to one upstream server of a model."""
