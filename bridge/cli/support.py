"""``bridge diagnose`` and ``bridge resolve``: the support desk; and ``bridge model
contact`` (registered by the ``model`` group through :func:`register_model_contact`)."""

from __future__ import annotations

import argparse
import json
from datetime import datetime

from bridge.admin import Admin
from bridge.cli.command import admin_command, who
from bridge.cli.options import Commands, database_options, device_arguments, model_arguments
from bridge.diagnosis import Action, Diagnosis
from bridge.support import SupportDesk


def register(commands: Commands) -> None:
    """Add ``diagnose`` and ``resolve``."""
    p = commands.add(
        "diagnose",
        _diagnose,
        parents=[database_options()],
        summary="why a device cannot be added or activated",
        description="The number's state and timeline (approval, claims, releases, "
        "activation attempts) and a verdict naming the cause, with its evidence and the "
        "next step. Any spelling of the number.",
    )
    device_arguments(p)
    p.add_argument(
        "--asking",
        metavar="OWNER",
        help="the account trying to add it (tells 'claimed by another')",
    )
    p.add_argument("--json", action="store_true", help="print JSON")

    p = commands.add(
        "resolve",
        _resolve,
        parents=[database_options()],
        summary="support acts on a diagnosis (release, transfer, approve, reenable)",
        description="Release a claim (whoever holds it; the previous owner sees the reason "
        "in their history), transfer it to the person asking, approve the number or open "
        "a new activation window; audited with you as the actor and your reason.",
    )
    p.add_argument("action", choices=[a.value for a in Action], metavar="ACTION", help="what to do")
    device_arguments(p)
    p.add_argument("--reason", metavar="TEXT", help="why (required for release and transfer)")
    p.add_argument("--to", metavar="OWNER", help="transfer: the new owner")


def register_model_contact(model: Commands) -> None:
    """Add ``model contact`` to the ``model`` group."""
    p = model.add(
        "contact",
        _contact,
        parents=[database_options()],
        summary="show or set a model's support contact",
        description="The support contact shown to owners beside refusals and on the pages "
        "(an address, a URL, a phone number). Without CONTACT: show it.",
    )
    model_arguments(p)
    p.add_argument("contact", nargs="?", metavar="CONTACT", help="the contact to set")
    p.add_argument("--clear", action="store_true", help="remove the contact")


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def render(d: Diagnosis) -> str:
    """The diagnosis as a person reads it in a terminal."""
    number = d.identifier or repr(d.typed)
    lines = [f"{d.vendor}/{d.model} {number}"]
    if d.device is not None:
        dev = d.device
        held = f", claimed by {dev.owner} since {_when(dev.claimed_at)}" if dev.owner else ""
        window = f", window until {_when(dev.window_ends_at)}" if dev.window_ends_at else ""
        lines.append(f"state:      {dev.state}{held}{window}")
    else:
        lines.append("state:      not on the approval list")
    cause = f" (cause {d.cause})" if d.cause else ""
    lines += [f"verdict:    {d.verdict.value}{cause}", f"            {d.summary}", "evidence:"]
    lines += [f"  - {e}" for e in d.evidence]
    lines.append(f"next step:  {d.next_step}")
    if d.actions:
        lines.append(f"resolve:    bridge resolve {{{','.join(a.value for a in d.actions)}}} ...")
    if d.support_contact:
        lines.append(f"support:    {d.support_contact}")
    if d.timeline:
        lines.append("timeline:")
    for e in d.timeline:
        who = e.client_id if e.action == "activate" else (e.owner or e.actor or "-")
        extra = f" {e.presented!r}" if e.action == "activate" and e.presented else ""
        times = f" x{e.count}" if e.count > 1 else ""
        lines.append(f"  {_when(e.at)}  {e.action:<9} {e.code:<18} {who}{extra}{times}")
    return "\n".join(lines)


@admin_command(audited=False)
async def _diagnose(admin: Admin, args: argparse.Namespace) -> None:
    found = await admin.diagnose(args.vendor, args.model, args.identifier, asking=args.asking)
    if args.json:
        # Imported here: the JSON shape is the HTTP API's, and FastAPI stays out of
        # the other commands.
        from bridge.web.routes.support import diagnosis_body  # noqa: PLC0415

        print(json.dumps(diagnosis_body(found).model_dump(mode="json")))
    else:
        print(render(found))


@admin_command()
async def _resolve(admin: Admin, args: argparse.Namespace) -> None:
    print(
        await admin.resolve(
            args.vendor, args.model, args.identifier, args.action, reason=args.reason, to=args.to
        )
    )


@admin_command()
async def _contact(admin: Admin, args: argparse.Namespace) -> None:
    desk = SupportDesk(admin)
    if args.clear or args.contact is not None:
        value = await desk.set_contact(
            args.vendor,
            args.model,
            None if args.clear else args.contact,
            actor=who(),
        )
    else:
        value = await desk.contact(args.vendor, args.model)
    print(f"{args.vendor}/{args.model} support contact: {value or '-'}")
