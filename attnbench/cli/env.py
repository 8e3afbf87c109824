"""``attnbench env``: the provenance every run records, for this machine."""
from __future__ import annotations

import json


def add_cli(sub) -> None:
    p = sub.add_parser("env", help="versions, device and git state that runs record")
    p.set_defaults(func=cmd_env)


def cmd_env(args, console) -> int:
    import torch

    from attnbench.env import provenance

    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    console.print_json(json.dumps(provenance(device), default=str))
    return 0
