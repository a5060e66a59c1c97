"""``bridge enrollment-key`` and ``bridge device-secret``: device proof beyond the sticker."""

from __future__ import annotations

import argparse

from bridge.admin import Admin
from bridge.cli.command import admin_command, when
from bridge.cli.options import (
    Commands,
    database_options,
    device_arguments,
    model_arguments,
    secret_options,
)


def register(commands: Commands) -> None:
    """Add ``enrollment-key`` and its actions, and ``device-secret``."""
    enrollment = commands.group(
        "enrollment-key",
        summary="a model's enrollment key: require device proof beyond the sticker",
        description="A model with an enrollment key requires device proof: each device "
        "carries a factory secret (printed by `bridge device-secret`) and proves it with each "
        "activation request; a request without a valid proof is answered like a number that "
        "is not approved. The key is 32 random bytes, stored only encrypted under "
        "BRIDGE_SECRET, and never shown.",
    )
    p = enrollment.add(
        "create",
        _create,
        parents=[database_options(), secret_options()],
        summary="create a model's first enrollment key; the model then requires device proof",
        description="Create the model's enrollment key. From now on every activation of the "
        "model must carry a valid proof: do this before the first device leaves the factory, "
        "since devices without a secret can no longer activate.",
    )
    model_arguments(p)
    p = enrollment.add(
        "rotate",
        _rotate,
        parents=[database_options(), secret_options()],
        summary="add a new enrollment key generation for the devices made from now on",
        description="Add a new generation of the model's enrollment key: `bridge "
        "device-secret` prints secrets from it from now on. The previous generations stay "
        "accepted, so devices already made keep working, until they are retired "
        "(--retire-previous, or `bridge enrollment-key retire`).",
    )
    model_arguments(p)
    p.add_argument(
        "--retire-previous",
        action="store_true",
        help="stop accepting every previous generation now (a leaked key): devices made with "
        "them can no longer activate until they get a new secret",
    )
    p = enrollment.add(
        "retire",
        _retire,
        parents=[database_options()],
        summary="stop accepting an older generation of the enrollment key",
        description="Retire one older generation: devices whose secret derives from it can "
        "no longer activate. The newest generation is replaced by rotating, never retired.",
    )
    model_arguments(p)
    p.add_argument("generation", type=int, metavar="GENERATION", help="as `list` shows it")
    p = enrollment.add(
        "list",
        _list,
        parents=[database_options()],
        summary="the generations of a model's enrollment key (never a key)",
        description="Generations of the model's enrollment key, newest first, with when "
        "each was created and retired.",
    )
    model_arguments(p)

    p = commands.add(
        "device-secret",
        _device_secret,
        parents=[database_options(), secret_options()],
        summary="print a device's factory secret (models that require device proof)",
        description="Print the factory secret of one device, 64 lowercase hex characters and "
        "nothing else on stdout, for the factory line to burn into its firmware: "
        "HMAC-SHA256(the model's newest enrollment key, the canonical identifier). Any "
        "spelling of the identifier gives the same secret. Audited (never the secret).",
    )
    device_arguments(p)


@admin_command()
async def _create(admin: Admin, args: argparse.Namespace) -> None:
    generation = await admin.create_enrollment_key(args.vendor, args.model)
    print(
        f"created enrollment key generation {generation} of {args.vendor}/{args.model}; "
        "its activations now require device proof (secrets: bridge device-secret)"
    )


@admin_command()
async def _rotate(admin: Admin, args: argparse.Namespace) -> None:
    generation = await admin.rotate_enrollment_key(
        args.vendor, args.model, retire_previous=args.retire_previous
    )
    previous = (
        "previous generations are retired: devices made with them can no longer activate"
        if args.retire_previous
        else "previous generations stay accepted until retired, so devices already made "
        "keep working"
    )
    print(
        f"created enrollment key generation {generation} of {args.vendor}/{args.model}; "
        f"new device secrets derive from it; {previous}"
    )


@admin_command()
async def _retire(admin: Admin, args: argparse.Namespace) -> None:
    await admin.retire_enrollment_key(args.vendor, args.model, args.generation)
    print(
        f"retired enrollment key generation {args.generation} of {args.vendor}/{args.model}; "
        "devices whose secret derives from it can no longer activate"
    )


@admin_command()
async def _list(admin: Admin, args: argparse.Namespace) -> None:
    generations = await admin.enrollment_keys(args.vendor, args.model)
    if not generations:
        print(f"{args.vendor}/{args.model} has no enrollment key (no device proof required)")
    for g in generations:
        state = f"retired {when(g.retired_at)}" if g.retired_at else "accepted"
        print(f"generation {g.generation:<4} created {when(g.created_at)}  {state}")


@admin_command()
async def _device_secret(admin: Admin, args: argparse.Namespace) -> None:
    _, secret_hex = await admin.device_secret(args.vendor, args.model, args.identifier)
    print(secret_hex)
