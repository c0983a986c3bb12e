"""The `ecpa` commands: one thin module per command (parse options, call the library in pipeline/, print).

The stage bodies, the chain, its keys and its records live in the library (pipeline/<stage>/stage.py,
pipeline/chain/); nothing in pipeline/ imports this package.
"""
