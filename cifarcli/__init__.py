"""cifarcli: train, evaluate, export and serve a small image classifier, one command each."""

__version__ = "0.1.0"
