"""What a team sets up once on its Prefect server (``make prefect-setup``; docs/prefect.md):

- ``pools``: every work pool the deployments of ``prefect.yaml`` name, as process pools, so
  ``prefect deploy --all`` deploys all of them (it refuses a deployment whose pool does not
  exist); a pool that exists is left as it is;
- ``alert``: an automation that sends a notification when a run of the pipeline flow fails,
  crashes or times out (a scheduled run that fails at 03:00 must tell someone). The notification
  goes through a Prefect notification block: ``--webhook URL`` makes (or updates) a custom
  webhook block that POSTs JSON ``{"subject": ..., "text": ...}`` to ``URL``; ``--block
  TYPE/NAME`` uses one the team configured in the UI (Slack, Teams, email, PagerDuty, ...).
  Re-running replaces the automation: one alert, whatever the number of runs.

Both talk to the server at ``PREFECT_API_URL``.
"""

from __future__ import annotations

import argparse
import sys
import typing as tp
from pathlib import Path

import yaml

from codec.errors import UserError

FLOW_NAME = "codec-pipeline"
AUTOMATION = "codec-pipeline failed"
WEBHOOK_BLOCK = "codec-pipeline-alert"
# The state names of a run that ended without its work done (a TimedOut run is of type FAILED).
FAILED_EVENTS = ("prefect.flow-run.Failed", "prefect.flow-run.Crashed", "prefect.flow-run.TimedOut")
SUBJECT = "{{ flow.name }} run {{ flow_run.name }}: {{ flow_run.state.name }}"
BODY = (
    "{{ flow.name }} run {{ flow_run.name }} ({{ flow_run.id }}) ended {{ flow_run.state.name }}: "
    "{{ flow_run.state.message }}\n"
    "Deployment: {{ deployment.name if deployment else 'none (run by hand)' }}. "
    "The run's page: {{ flow_run|ui_url }}"
)


def deployment_pools(prefect_yaml: Path) -> list[str]:
    """The work pools the deployments of ``prefect_yaml`` name, in order, once each."""
    try:
        doc = yaml.safe_load(prefect_yaml.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{prefect_yaml}: cannot be read ({e}); run from the repository root") from None
    pools: list[str] = []
    for d in (doc or {}).get("deployments") or []:
        name = ((d or {}).get("work_pool") or {}).get("name")
        if isinstance(name, str) and name and name not in pools:
            pools.append(name)
    return pools


def ensure_pools(names: tp.Sequence[str], say: tp.Callable[[str], None] = print) -> list[str]:
    """Create each of ``names`` that does not exist as a process work pool; returns the created."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    created = []
    with get_client(sync_client=True) as client:
        for name in names:
            try:
                client.read_work_pool(name)
                say(f"work pool {name}: exists")
            except ObjectNotFound:
                client.create_work_pool(WorkPoolCreate(name=name, type="process"))
                created.append(name)
                say(f"work pool {name}: created (process)")
    return created


def webhook_block(url: str) -> tp.Any:
    """The custom webhook notification block :data:`WEBHOOK_BLOCK`, POSTing to ``url``, saved."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    block = CustomWebhookNotificationBlock(
        name=WEBHOOK_BLOCK,
        url=url,
        method="POST",
        json_data={"subject": "{{subject}}", "text": "{{body}}"},
        headers=None,
        cookies=None,
    )
    block.save(WEBHOOK_BLOCK, overwrite=True)
    return block


def load_block(spec: str) -> tp.Any:
    """A saved notification block, ``TYPE/NAME`` (``slack-webhook/ops``)."""
    from prefect.blocks.abstract import NotificationBlock
    from prefect.blocks.core import Block

    if "/" not in spec:
        raise UserError(f"--block {spec!r}: give the block as TYPE/NAME (e.g. slack-webhook/ops)")
    try:
        block = Block.load(spec)
    except (ValueError, RuntimeError) as e:
        raise UserError(f"--block {spec}: no such block on the server ({e}); create it in the UI first") from None
    if not isinstance(block, NotificationBlock):
        raise UserError(f"--block {spec}: a {type(block).__name__}, not a notification block")
    return block


def ensure_alert(block: tp.Any, flow_name: str = FLOW_NAME) -> tp.Any:
    """The automation :data:`AUTOMATION`: a run of ``flow_name`` that fails, crashes or times out
    sends a notification through ``block`` (a saved notification block); replaces an earlier one."""
    from prefect.automations import Automation
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture

    block_id = getattr(block, "_block_document_id", None)
    if block_id is None:
        raise UserError("the notification block is not saved on the server")
    try:
        earlier: tp.Any = Automation.read(name=AUTOMATION)  # sync here (no event loop)
    except ValueError:  # none yet
        earlier = None
    if earlier is not None:
        earlier.delete()
    return Automation(
        name=AUTOMATION,
        description=f"Tell someone when a run of {flow_name} ends Failed, Crashed or TimedOut (flows/ops.py)",
        trigger=EventTrigger(
            expect=set(FAILED_EVENTS),
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": flow_name},
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=[SendNotification(block_document_id=block_id, subject=SUBJECT, body=BODY)],
    ).create()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.ops", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    pools = sub.add_parser("pools", help="create the work pools prefect.yaml's deployments use")
    pools.add_argument("--prefect-yaml", default="prefect.yaml", type=Path)
    alert = sub.add_parser("alert", help="notify on a failed, crashed or timed-out pipeline run")
    where = alert.add_mutually_exclusive_group(required=True)
    where.add_argument("--webhook", help="URL to POST the notification to (a custom webhook block is saved)")
    where.add_argument("--block", help="a notification block configured on the server, TYPE/NAME")
    args = parser.parse_args(argv)
    try:
        if args.command == "pools":
            names = deployment_pools(args.prefect_yaml)
            if not names:
                raise UserError(f"{args.prefect_yaml}: no deployment names a work pool")
            ensure_pools(names)
        else:
            block = webhook_block(args.webhook) if args.webhook else load_block(args.block)
            automation = ensure_alert(block)
            print(f"automation '{automation.name}' ({automation.id}): a failed run of {FLOW_NAME} notifies")
    except UserError as e:
        print(f"flows.ops: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
