"""
The pairing and discovery commands of C{relaymesh}: C{invite}, C{join} and
C{discover}, and the strong code of C{pair --strong}.

C{join} and C{discover} run the reactor for as long as they need it
(L{run_reactor}); every other step, and every time they read
(C{clock}), can be replaced in tests.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError

from relaymesh.address import DEFAULT_PORT, InvalidAddress, parse_port
from relaymesh.cli import live
from relaymesh.cli.base import (
    PROG,
    Command,
    CommandError,
    Context,
    format_last_seen,
    format_table,
    run_reactor,
)
from relaymesh.codes import InvalidCode
from relaymesh.control.client import ApiRequestError, NodeClient, NodeNotProven, NodeNotRunning, TokenMissing
from relaymesh.discovery import (
    ANNOUNCE_PORT,
    DEFAULT_LISTEN_SECONDS,
    MAX_SIGHTINGS,
    Sighting,
    SightingTable,
    discover,
)
from relaymesh.handshake.pake import generate_strong_code
from relaymesh.invite import (
    DEFAULT_EXPIRY,
    FORM_DESCRIPTIONS,
    InviteForms,
    JoinError,
    arm_invite,
    ask_node_to_dial,
    default_invite_host,
    join_directly,
    local_node,
    make_invite,
    node_port,
    parse_join_input,
)
from relaymesh.printable import printable
from relaymesh.tls import NodeCertificate, TLSError

#: What tells the time: epoch seconds.
clock: Callable[[], float] = time.time

#: What C{--qr} and C{--qr-png} say when the C{qrcode} package is missing.
QR_MISSING = "--qr needs the qrcode package: pip install 'relaymesh[qr]'"

#: Modules of light border around a QR code (the standard asks for 4; 2 is
#: enough for phone cameras and keeps the code small in a terminal).
QR_BORDER = 2


#: The longest an invite may last, in minutes.
MAX_EXPIRY_MINUTES = 7 * 24 * 60


def _positive_minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:20]!r} is not a number of minutes") from None
    if not 0 < value <= MAX_EXPIRY_MINUTES:
        raise argparse.ArgumentTypeError(
            f"{text[:20]!r}: an invite must last more than 0 minutes and at most "
            f"{MAX_EXPIRY_MINUTES} (7 days)"
        )
    return value


def _port(text: str) -> int:
    try:
        return parse_port(text)
    except InvalidAddress:
        raise argparse.ArgumentTypeError(f"{text[:20]!r} is not a port from 1 to 65535") from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:20]!r} is not a number of seconds") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text[:20]!r}: give more than 0 seconds and at most 3600")
    return value


def _iso(seconds: float) -> str:
    return format_last_seen(int(seconds * 1000)) or "?"


def _duration(seconds: float) -> str:
    """
    Say how long C{seconds} is, in whole units: C{10 minutes}, C{90 seconds}.
    """
    for unit, size in (("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    count = round(seconds)
    return f"{count} second{'s' if count != 1 else ''}"


# The running node


def running_node(context: Context, args: argparse.Namespace, identity: str) -> NodeClient | None:
    """
    The control API client of the node running on the key store, found as
    the live commands find it (C{--api}, C{--api-token-file}, else the data
    directory's C{api-url} and C{api-token}), or C{None} if none answers
    with this key store's identity.
    """
    node: NodeClient | None = local_node(
        context.data_dir, identity, getattr(args, "api", None), getattr(args, "api_token_file", None)
    )
    return node


def named_node(
    context: Context, args: argparse.Namespace, identity: str
) -> tuple[NodeClient | None, int | None]:
    """
    The running node as L{running_node} finds it; but when C{--api} names
    one and it cannot be used, say why instead of going on without it.

    @return: the node's client (C{None} if none answers and none was named),
        and the exit status to end the command with (C{None} to go on).
    @raise CommandError: if the named node refused, did not prove that it
        holds the token, or is another key store's node.
    """
    node = running_node(context, args, identity)
    if node is not None or not getattr(args, "api", None):
        return node, None
    try:
        node = live.client(context, args)
        status = node.call("GET", "/api/status")
    except NodeNotProven as e:
        raise live.not_proven(context, args, e) from None
    except (NodeNotRunning, TokenMissing) as e:
        return None, live.not_running(context, args, e)
    except ApiRequestError as e:
        raise live.refused(e, context, args) from None
    other = status.get("identity") if isinstance(status, dict) else None
    if other == identity:  # it answers now
        node.status = status
        return node, None
    raise CommandError(
        f"--api {node.url}: that node is {printable(other) if isinstance(other, str) else '?'}, "
        f"not {identity}, the node of {context.data_dir}"
    )


#: Why an invite of a node whose peers connect over TLS only has no
#: command for claudectl.
CLAUDECTL_NO_TLS = (
    "claudectl cannot join: this node listens with TLS only; add a plain --listen for claudectl peers"
)


def _tls_flag(node: NodeClient | None) -> str:
    """
    C{" --tls"} if the running node accepts peers over TLS only (a C{tls:}
    listener, as with C{twistd relaymesh --tls}), so that the join command
    printed for the other node dials it over TLS; else C{""}.
    """
    return " --tls" if node is not None and node.status.get("listen_tls") is True else ""


# QR codes


def qr_matrix(data: str) -> list[list[bool]]:
    """
    The modules of a QR code of C{data}, with its border; C{True} is dark.

    @raise CommandError: if the C{qrcode} package is missing.
    """
    try:
        import qrcode
    except ImportError:
        raise CommandError(QR_MISSING) from None
    qr = qrcode.QRCode(border=QR_BORDER, error_correction=qrcode.constants.ERROR_CORRECT_M)
    qr.add_data(data)
    qr.make(fit=True)
    matrix: list[list[bool]] = qr.get_matrix()
    return matrix


def render_qr(matrix: list[list[bool]], encoding: str | None = "utf-8") -> str:
    """
    Draw a QR code for a terminal.

    Light modules are drawn, dark ones left blank, so that the code reads
    right in the usual light-on-dark terminal (phone cameras also read it
    the other way round). With block characters two rows of modules share
    a line; where the output encoding has none, C{##} is one module.

    @param matrix: the modules, C{True} for dark.
    @param encoding: the output's encoding.
    @return: the lines, each ending in a newline.
    """
    try:
        "\u2580\u2584\u2588".encode(encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return "".join(
            "".join("  " if dark else "##" for dark in row).rstrip() + "\n" for row in matrix
        )
    blocks = {
        (False, False): "\u2588",  # full block: both light
        (False, True): "\u2580",  # upper half: the upper one light
        (True, False): "\u2584",  # lower half: the lower one light
        (True, True): " ",
    }
    lines = []
    for top in range(0, len(matrix), 2):
        upper = matrix[top]
        lower = matrix[top + 1] if top + 1 < len(matrix) else [True] * len(upper)
        lines.append("".join(blocks[u, d] for u, d in zip(upper, lower)).rstrip() + "\n")
    return "".join(lines)


def save_qr_png(data: str, path: str) -> None:
    """
    Save a QR code of C{data} as a PNG file.

    @raise CommandError: if C{qrcode} or C{pypng} is missing.
    @raise OSError: if the file cannot be written.
    """
    try:
        import qrcode
        from qrcode.image.pure import PyPNGImage
    except ImportError:
        raise CommandError(QR_MISSING) from None
    if importlib.util.find_spec("png") is None:  # qrcode's PNG writer needs pypng
        raise CommandError(QR_MISSING)
    image = qrcode.make(
        data,
        image_factory=PyPNGImage,
        border=QR_BORDER,
        error_correction=qrcode.constants.ERROR_CORRECT_M,
    )
    buffer = io.BytesIO()
    image.save(buffer)
    with open(path, "wb") as f:
        f.write(buffer.getvalue())


# invite


def add_invite_arguments(parser: argparse.ArgumentParser) -> None:
    """
    Add C{invite}'s options.
    """
    parser.add_argument(
        "--host",
        metavar="H",
        help="the address peers dial (default: the first non-loopback IPv4 address)",
    )
    parser.add_argument(
        "--port",
        metavar="P",
        type=_port,
        help=f"the port peers dial (default: the running node's, else {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--expires",
        metavar="MINUTES",
        type=_positive_minutes,
        default=DEFAULT_EXPIRY / 60,
        help=f"minutes until the invite stops working (default {DEFAULT_EXPIRY / 60:g})",
    )
    parser.add_argument(
        "--words",
        action="store_true",
        help="suggest the word phrase (32-bit, easy to read out) for the other node",
    )
    parser.add_argument("--qr", action="store_true", help="draw a QR code of the strong link")
    parser.add_argument(
        "--qr-png", metavar="FILE", help="save a QR code of the strong link as PNG"
    )


def run_invite(context: Context, args: argparse.Namespace) -> int | None:
    """
    Make an invite in every form, arm its keys and print it.

    Without a node that answers the invite names the default port, unless
    C{--api} named the node: then it is an error (status 1 when nothing
    answers there, as for the live commands). For a node whose peers
    connect over TLS only, the command for claudectl (which cannot) is left
    out, and a line says why.

    @param context: the command's context.
    @param args: the parsed arguments.
    """
    store = context.store
    identity = store.identity()
    host = args.host if args.host is not None else default_invite_host()
    node, status = named_node(context, args, identity)
    if status is not None:
        return status
    port = args.port
    if port is None:
        port = node_port(node) or DEFAULT_PORT
    tls = _tls_flag(node)
    now = clock()
    invite = make_invite(identity, host, port, now, args.expires * 60)
    suggested = invite.strong_link
    if args.words:
        if invite.words is None:
            raise CommandError(f"--words: no word phrase for this address: {invite.no_legacy_reason}")
        suggested = invite.words
    qr = None
    if args.qr:
        encoding = None if context.json_output else getattr(context.stdout, "encoding", None)
        qr = render_qr(qr_matrix(invite.strong_link), encoding or "utf-8")
    if args.qr_png is not None:
        save_qr_png(invite.strong_link, args.qr_png)
    arm_invite(store, invite)
    data = {
        "identity": identity,
        "host": invite.host,
        "port": invite.port,
        "addr": invite.addr,
        "expires_at": _iso(invite.expires_at),
        "expires_in": round(invite.expires_at - now, 3),
        "strong_link": invite.strong_link,
        "strong_code": invite.strong_code,
        "relaymesh_link": invite.relaymesh_link,
        "link": invite.link,
        "pair_code": invite.pair_code,
        "peer": invite.peer,
        "relay_code": invite.relay_code,
        "words": invite.words,
        "legacy_forms": [] if invite.relay_code is None else ["relay_code", "words"],
        "join": f"{PROG} join {suggested}{tls}",
        "claudectl_join": None if tls else f"claudectl relay join {invite.link}",
    }
    if tls:
        data["claudectl_unusable"] = CLAUDECTL_NO_TLS
    if qr is not None:
        data["qr"] = qr
    if args.qr_png is not None:
        data["qr_png"] = args.qr_png
    context.emit(data, (qr or "") + _invite_text(invite, now, suggested + tls, args.qr_png, claudectl=not tls))
    return None


def _invite_text(invite: InviteForms, now: float, suggested: str, png: str | None, claudectl: bool = True) -> str:
    legacy = " (32-bit legacy form)"
    if invite.relay_code is not None and invite.words is not None:  # both or neither
        relay_code, words = invite.relay_code + legacy, invite.words + legacy
    else:
        relay_code = words = f"none: {invite.no_legacy_reason}"
    rows = [
        ("Identity:", invite.identity),
        ("Address:", invite.addr),
        ("Expires:", f"{_iso(invite.expires_at)} (in {_duration(invite.expires_at - now)})"),
        ("", ""),
        ("Strong link:", f"{invite.strong_link} (one try; relaymesh only)"),
        ("Strong code:", f"{invite.strong_code} (with --peer {invite.peer})"),
        ("relaymesh link:", f"{invite.relaymesh_link} (64-bit)"),
        ("cctl:// link:", invite.link),
        ("Pair code:", f"{invite.pair_code} (with --peer {invite.peer})"),
        ("Relay code:", relay_code),
        ("Word phrase:", words),
    ]
    lines = [format_table(rows), ""]
    if invite.relay_code is not None:
        lines.append(
            "Relay codes and word phrases are claudectl's 32-bit legacy forms: "
            "prefer a link."
        )
    if png is not None:
        lines.append(f"QR code of the strong link saved to {png}.")
    lines.append(f"On the other node, run: {PROG} join {suggested}")
    if claudectl:
        lines.append(f"From claudectl, run:    claudectl relay join {invite.link}")
    else:
        lines.append(CLAUDECTL_NO_TLS)
    return "\n".join(lines)


def run_strong_pair(context: Context, args: argparse.Namespace) -> int | None:
    """
    C{relaymesh pair --strong}: arm a one-time strong code and print it with
    the command the other node runs.

    @param context: the command's context.
    @param args: the parsed arguments, with C{expires} in minutes.
    """
    if not args.expires > 0:
        raise CommandError(f"--expires: {args.expires:g} is not a positive number of minutes")
    store = context.store
    identity = store.identity()
    node, status = named_node(context, args, identity)
    if status is not None:
        return status
    code = generate_strong_code()
    now = clock()
    store.arm_strong_code(code, expires_at=now + args.expires * 60)
    try:
        host = default_invite_host()
    except InvalidCode:
        host = "HOST"
    port = node_port(node) or DEFAULT_PORT
    peer = f"{identity}@{host}:{port}"
    join = f"{PROG} join {code} --peer {peer}{_tls_flag(node)}"
    context.emit(
        {
            "strong_code": code,
            "identity": identity,
            "peer": peer,
            "expires_at": _iso(now + args.expires * 60),
            "join": join,
        },
        f"Strong code: {code} (one try; expires in {_duration(args.expires * 60)})\n"
        f"On the other node, run: {join}",
    )
    return None


# join


def add_join_arguments(parser: argparse.ArgumentParser) -> None:
    """
    Add C{join}'s arguments: the invite, and C{--peer} for a pair code.
    """
    parser.add_argument(
        "invite",
        metavar="INPUT",
        nargs="+",
        help="a relaymesh:// or cctl:// link, a relay code, a word phrase (its words may be "
        "separate arguments), or a pair code",
    )
    parser.add_argument(
        "--peer",
        metavar="ID@HOST:PORT",
        help="the inviting node, when INPUT is a bare pair code or strong code",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="join over TLS with this node's certificate (relaymesh tls-init)",
    )
    parser.add_argument(
        "--replace",
        action="store_true",
        help="replace the key of a peer already paired with (refused otherwise)",
    )


def run_join(context: Context, args: argparse.Namespace) -> int | None:
    """
    Pair with the node that printed an invite.

    @param context: the command's context.
    @param args: the parsed arguments, with C{invite} and C{peer}.
    @return: the exit status when C{--api} names a node that does not
        answer (nothing is paired then).
    @raise CommandError: if the join fails.
    """
    invite = parse_join_input(" ".join(args.invite), args.peer)
    store = context.store
    named = None
    if getattr(args, "api", None):  # the node asked to dial must answer first
        named, status = named_node(context, args, store.identity())
        if status is not None:
            return status
    certificate = None
    if args.tls:
        try:
            certificate = NodeCertificate.from_data_dir(context.data_dir)
        except TLSError as e:
            raise CommandError(str(e)) from None
    try:
        result = run_reactor(
            lambda reactor: join_directly(
                store, invite, reactor, certificate=certificate, replace=args.replace
            )
        )
    except JoinError as e:
        raise CommandError(str(e)) from None
    node = named or running_node(context, args, store.identity())
    dialling = node is not None and ask_node_to_dial(node, result)
    peer_id, addr, peer = printable(result.peer_id), printable(result.addr), printable(result.peer)
    if result.replaced:
        text = f"Replaced the key of {peer_id}: paired again with {peer_id} ({addr})"
    else:
        text = f"Paired with {peer_id} ({addr})"
    if dialling:
        new_key = " with the new key" if result.replaced else ""
        text += f"\nThe running node is connecting to {peer_id}{new_key}."
    else:
        text += f"\nA node started on this key store dials {peer} (its address is remembered)."
    data = {
        "peer_id": result.peer_id,
        "addr": result.addr,
        "peer": result.peer,
        "form": result.form,
        "paired_via": FORM_DESCRIPTIONS.get(result.form, result.form),
        "node_dialling": dialling,
        "replaced": result.replaced,
    }
    context.emit(data, text)
    return None


# discover


def add_discover_arguments(parser: argparse.ArgumentParser) -> None:
    """
    Add C{discover}'s options.
    """
    parser.add_argument(
        "--seconds",
        metavar="N",
        type=_seconds,
        default=DEFAULT_LISTEN_SECONDS,
        help=f"how long to listen (default {DEFAULT_LISTEN_SECONDS:g})",
    )
    parser.add_argument(
        "--port",
        metavar="P",
        type=_port,
        default=ANNOUNCE_PORT,
        help=f"the UDP port announcements go to (default {ANNOUNCE_PORT})",
    )


def run_discover(context: Context, args: argparse.Namespace) -> None:
    """
    Listen for node announcements and list the nodes heard.

    @param context: the command's context.
    @param args: the parsed arguments, with C{seconds} and C{port}.
    """
    own = context.store.identity()
    tables: list[SightingTable] = []

    def listen(reactor: Any) -> Deferred[list[Sighting]]:
        tables.append(SightingTable(reactor))
        return discover(reactor, args.seconds, args.port, ignore=own, table=tables[0])

    try:
        sightings = run_reactor(listen)
    except CannotListenError as e:
        raise CommandError(f"cannot listen on UDP port {args.port}: {e.socketError}") from None
    turned_away = tables[0].turned_away if tables else 0
    if sightings:
        # What a node announces is printed escaped, whatever parsing let by.
        rows = [("IDENTITY", "ADDRESS", "VERSION")]
        rows += [
            (printable(s.identity), printable(s.addr), printable(s.version) or "-")
            for s in sightings
        ]
        text = format_table(rows)
    else:
        text = f"No nodes heard in {args.seconds:g} s."
    data = {"nodes": [s.to_dict() for s in sightings], "seconds": args.seconds}
    if turned_away:
        text += (
            f"\n{turned_away} more announcements were not kept: the list was full "
            f"({MAX_SIGHTINGS} nodes). Something on this network sends many of them."
        )
        data["turned_away"] = turned_away
    context.emit(data, text)


#: The pairing and discovery commands, in the order the help lists them.
COMMANDS = (
    Command(
        "invite",
        "print an invite in every form and arm its keys",
        add_invite_arguments,
        run_invite,
    ),
    Command("join", "pair with the node that printed an invite", add_join_arguments, run_join),
    Command(
        "discover",
        "list the nodes announcing themselves on the LAN",
        add_discover_arguments,
        run_discover,
    ),
)
