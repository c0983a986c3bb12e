"""Runnable stages (extract, train, caption, score), the chain that links them, and the `ecpa` CLI.

Each stage module declares `VERSION` (bump it when what the stage computes changes: that
invalidates its outputs and everything downstream) and `config_slice(cfg)` (exactly the config
fields it reads: its key hashes these and nothing else), and exposes `run(cfg, ...)`.
Heavy libraries (torch, zarr) are imported inside `run`, so `ecpa status` stays fast.
"""
