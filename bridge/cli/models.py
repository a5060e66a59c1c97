"""``bridge model add``: register a vendor's model and how its devices are identified."""

from __future__ import annotations

import argparse

from bridge import identifiers
from bridge.admin import Admin
from bridge.cli import support
from bridge.cli.command import admin_command
from bridge.cli.options import Commands, database_options, model_arguments, parse_duration


def register(commands: Commands) -> None:
    """Add ``model`` and its actions."""
    model = commands.group(
        "model",
        summary="manage device models",
        description="Register the models whose devices the bridge provisions.",
    )
    p = model.add(
        "add",
        _add,
        parents=[database_options()],
        summary="register a model",
        description="Register a vendor's model and how its devices are identified.",
    )
    model_arguments(p)
    p.add_argument(
        "--kind",
        required=True,
        choices=[k.value for k in identifiers.Kind],
        help="which number is on the sticker",
    )
    p.add_argument("--pattern", metavar="REGEX", help="serial numbers must match this regex")
    p.add_argument(
        "--window",
        type=parse_duration,
        default=86_400,
        metavar="DURATION",
        help="activation window after a claim: seconds or 30m, 24h, 7d (default 24h)",
    )
    p.add_argument(
        "--no-claim",
        action="store_true",
        help="devices may activate on approval alone (window opens at approval)",
    )
    p.add_argument(
        "--plaintext-keys",
        action="store_true",
        help="also deliver keys in plaintext to requests without a public key, for devices "
        "that cannot do X25519 (default: sealed only; such requests get seal_required)",
    )
    support.register_model_contact(model)


@admin_command()
async def _add(admin: Admin, args: argparse.Namespace) -> None:
    row = await admin.add_model(
        args.vendor,
        args.model,
        kind=args.kind,
        pattern=args.pattern,
        window_seconds=args.window,
        claim_required=not args.no_claim,
        plaintext_keys=args.plaintext_keys,
    )
    claim = "claim required" if row.claim_required else "no claim needed"
    window = f"window {row.window_seconds}s"
    delivery = "keys sealed or plaintext" if row.plaintext_keys else "keys sealed only"
    print(f"added model {row.vendor}/{row.model}: kind {row.kind}, {window}, {claim}, {delivery}")
