"""The agent's settings: every key, its default and its bounds (read by adapters.config_file)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ajr_agent.domain.control import FailoverMode
from ajr_agent.domain.errors import AjrError

DEFAULT_SITE_RULES_DIR = Path("/etc/ajr/rules.d")


class ConfigError(AjrError):
    """The configuration file or an AJR_* variable holds something the agent cannot use."""


class SlurmBackend(StrEnum):
    """How the agent talks to Slurm."""

    AUTO = "auto"
    COMMANDS = "commands"
    PYSLURM = "pyslurm"


class RestartSuccess(StrEnum):
    """When a restarted attempt counts as successful (which resets the crash-loop count)."""

    CHECKPOINT = "checkpoint"  # it saved its first checkpoint
    RUNTIME = "runtime"  # it ran for restart_success_minutes


class LemonAction(StrEnum):
    """What AJR does to a lemon node besides keeping it out of every managed job."""

    EXCLUDE = "exclude"  # only keep it out of the managed jobs' next attempts
    DRAIN = "drain"  # also drain it, with a reason (on evidence AJR trusts only)
    REBOOT = "reboot"  # also `scontrol reboot ASAP nextstate=RESUME` it (on evidence AJR trusts only)


class LimitScope(StrEnum):
    """What a job's max_requeue_times bounds."""

    TOTAL = "total"  # every requeue, whatever its cause (node and infrastructure failures have their caps too)
    APPLICATION = "application"  # the job's own failures; the others have their caps, all of them site_requeue_cap


class Settings(BaseModel):
    """Every setting of the agent and the CLI, with its default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    poll_interval: float = Field(default=1.0, gt=0, description="seconds between two reads of the Slurm queue")
    tail_interval: float = Field(default=0.25, gt=0, description="seconds between two looks at the followed log files")
    tail_quiet_after: float = Field(
        default=30.0, ge=0, description="a log file unchanged this long is looked at only every tail_quiet_interval"
    )
    tail_quiet_interval: float = Field(
        default=2.0, gt=0, le=60, description="seconds between two looks at a quiet log file (local writes wake it at once)"
    )
    log_scan_interval: float = Field(
        default=5.0, gt=0, description="seconds between two searches for new log files of a running job"
    )
    state_db: Path = Field(default=Path("/var/lib/ajr/ajr.db"), description="the SQLite state database")
    state_retention_days: float = Field(
        default=90.0, gt=0, description="days a job that left Slurm (or was forgotten) is kept in the state database"
    )
    state_prune_interval: float = Field(
        default=3600.0, gt=0, description="seconds between two passes that remove jobs past state_retention_days"
    )
    state_reserve_mb: int = Field(
        default=16, ge=0, le=4096,
        description="MiB set aside beside the database and given back when its disk fills; 0 for none",
    )  # fmt: skip
    max_notes_per_job: int = Field(
        default=1000, ge=10, description="lines of a job's story kept at most; repeating ones give way first"
    )
    max_bulk_notes_per_job: int = Field(
        default=200, ge=1, description="repeating lines of a job's story (checkpoints, log notices) kept at most"
    )
    max_readings_per_attempt: int = Field(
        default=10_000, ge=100, description="throughput readings kept per attempt, thinned evenly past it"
    )
    spool_dir: Path = Field(
        default=Path("/var/spool/ajr/epilog"), description="where the EpilogSlurmctld hook leaves job-end records"
    )
    end_settle_seconds: float = Field(
        default=10.0, gt=0, description="after a job-end record, how long to poll quickly until Slurm shows the end"
    )
    rules_dirs: tuple[Path, ...] = Field(
        default=(DEFAULT_SITE_RULES_DIR,),
        description="directories of site rule files, read after the shipped defaults; later files win by name",
    )
    log_dirs: tuple[Path, ...] = Field(
        default=(), description="directories searched for job logs besides each job's working and stdout directory"
    )
    site_requeue_cap: int = Field(default=50, ge=0, description="no job is requeued more often than this")
    crashloop_threshold: int = Field(
        default=3, ge=1, description="failed attempts in a row without a new checkpoint that stop the requeues"
    )
    restart_success: RestartSuccess = Field(
        default=RestartSuccess.CHECKPOINT, description="what makes a restart successful: checkpoint or runtime"
    )
    restart_success_minutes: float = Field(
        default=30.0, gt=0, description="with restart_success = runtime: minutes an attempt must run"
    )
    heartbeat_timeout: float = Field(
        default=120.0, gt=0, description="seconds without a log line after which a running job counts as hung"
    )
    hang_startup_grace: float = Field(
        default=300.0, ge=0, description="seconds after an attempt starts during which silence is no hang"
    )
    straggler_fraction: float = Field(
        default=0.7, gt=0, lt=1, description="throughput below this fraction of the attempt's baseline is a drop"
    )
    straggler_reports: int = Field(default=5, ge=1, description="reports in a row below it that make a straggler")
    straggler_recovery: bool = Field(
        default=False, description="treat a straggler like a failure (recover); by default it is only recorded"
    )
    node_log_dir: str = Field(
        default="", description="a node's kernel/system logs on shared storage, with {node} in the path; '' for none"
    )
    attribution_window: float = Field(
        default=300.0, gt=0, description="seconds around a failure in which node log lines count as evidence"
    )
    attribution_timeout: float = Field(
        default=10.0, gt=0, description="longest an attribution may take before the job is released anyway"
    )
    exclude_faulty_nodes: bool = Field(
        default=True, description="on a node verdict, exclude the node from the job's next attempt"
    )
    drain_faulty_nodes: bool = Field(
        default=False, description="on a node verdict resting on the node's own log or Slurm, also drain the node"
    )
    max_drains_per_hour: int = Field(default=2, ge=0, description="AJR drains at most this many nodes an hour")
    drain_keep_nodes: int = Field(
        default=1, ge=1, description="never drain a node if fewer than this many would stay in service in its partition"
    )
    lemon_jobs: int = Field(
        default=3, ge=0,
        description="a node blamed by failures of this many jobs becomes a lemon (one user's job logs count once); 0: off",
    )  # fmt: skip
    lemon_blames: int = Field(
        default=3, ge=0, description="or blamed this many times within lemon_window (one user's job logs count once); 0: off"
    )
    lemon_window: float = Field(default=86400.0, gt=0, description="seconds over which lemon_blames are counted")
    lemon_action: LemonAction = Field(
        default=LemonAction.EXCLUDE, description="besides keeping a lemon out of every managed job: exclude, drain, reboot"
    )
    trust_after: float = Field(
        default=86400.0, gt=0, description="seconds in service without new blame after which a node is trusted again"
    )
    node_check_interval: float = Field(
        default=60.0, gt=0, description="seconds between two reads of the nodes' states for the trust checks"
    )
    requeue_limit_scope: LimitScope = Field(
        default=LimitScope.TOTAL, description="what max_requeue_times bounds: total (every requeue) or application"
    )
    node_requeue_cap: int = Field(default=10, ge=0, description="requeues of a job after failures put on a node, at most")
    infrastructure_requeue_cap: int = Field(
        default=10, ge=0, description="requeues of a job after failures put on the shared infrastructure, at most"
    )
    annotate_jobs: bool = Field(
        default=True, description="write each decision into the job's AdminComment, where users see it"
    )
    dry_run: bool = Field(default=False, description="decide and record, but run no changing Slurm command")
    clear_begin_time: bool = Field(
        default=True, description="after a release, set StartTime=now+2 s instead of Slurm's ~120 s requeue wait"
    )
    slurm_backend: SlurmBackend = SlurmBackend.AUTO
    slurm_command_timeout: float = Field(default=15.0, gt=0, description="seconds before a Slurm command counts as hung")
    action_retry_delay: float = Field(default=2.0, gt=0, description="first wait before a failed Slurm action is tried again")
    action_retry_max_delay: float = Field(default=60.0, gt=0, description="longest wait between two tries of an action")
    action_max_tries: int = Field(default=10, ge=1, description="tries before a failing Slurm action is given up")
    max_line_bytes: int = Field(default=65536, ge=256, description="longer log lines are cut to this many bytes")
    max_log_files_per_job: int = Field(
        default=256, ge=1, le=100_000, description="log files followed per job at most; further ones are not read"
    )
    # 0.25: a whole 4 MiB read of a training log fits (0.1-0.2 s of rules on a busy 2-core
    # machine); at 0.1 a 100 MB backlog was read 8 % twice and caught up 10-20 % slower.
    rules_pass_budget: float = Field(
        default=0.25, gt=0, le=10,
        description="seconds the rules may spend on one job's new lines per pass; the rest wait for the next pass",
    )  # fmt: skip
    http_bind: str = Field(
        default="127.0.0.1", description="address the cockpit, API and /metrics listen on (loopback: reach it by SSH)"
    )
    http_port: int = Field(default=8470, ge=0, le=65535, description="port of the cockpit, API and /metrics; 0: none")
    operator_token: str = Field(
        default="", description="bearer token for the cockpit's requeue/release/forget; '' disables them"
    )
    notify_webhook_url: str = Field(default="", description="POST a JSON notification (Slack-compatible) here; '' for none")
    notify_command: str = Field(
        default="", description="run this command per notification, the event as JSON on stdin; '' for none"
    )
    notify_held_after: float = Field(
        default=600.0, gt=0, description="notify when a job AJR requeued stays held longer than this (seconds)"
    )
    notify_timeout: float = Field(default=10.0, gt=0, description="seconds before a webhook call or command is given up")
    notify_retry_delay: float = Field(default=2.0, gt=0, description="first wait before a failed notification is retried")
    notify_max_tries: int = Field(default=8, ge=1, description="tries of a notification before it is dropped")
    notify_queue_size: int = Field(
        default=1000, ge=1, description="notifications waiting at most; the oldest is dropped when more come"
    )

    failover: FailoverMode = Field(
        default=FailoverMode.OFF,
        description="slurm: an agent beside each SlurmctldHost, only the one beside the slurmctld in control acts",
    )
    ha_host: str = Field(default="", description="this host's name as SlurmctldHost spells it; '' for the short hostname")
    ha_lease_seconds: float = Field(
        default=15.0, gt=0, description="with failover: how long a silent active agent's lease holds off a takeover"
    )
    ha_status_file: Path = Field(
        default=Path("/run/ajr/control.json"), description="with failover: where this host's agent says what it is"
    )

    @property
    def state_db_wal(self) -> bool:
        """WAL only where one host opens the state database: failover's agents open it from two."""
        return self.failover is FailoverMode.OFF

    def with_overrides(self, **changes: object) -> "Settings":
        """A copy with some settings changed, validated like the file."""
        return Settings.model_validate(self.model_dump() | changes)


