"""Log-line rules: what a checkpoint save, a failure or a throughput report looks like.

Rules live in TOML files (``[[rule]]`` tables) in drop-in directories: the
shipped ``rules/NN-*.toml`` first (one family a file), then the site's ``/etc/ajr/rules.d``.
A later rule with the same name replaces an earlier one, and ``enabled = false``
turns a shipped rule off. ``rules/README.md`` documents the format for admins.

One failure usually prints several matching lines: a GPU that falls off the
bus makes its own rank print a CUDA error and every other rank a collective
timeout. Anomaly rules therefore carry a ``priority`` and may be marked
``cascade`` (usually a consequence of something else), and :func:`root_cause`
picks the match that best explains a set of matches.

Matching is the hot path of the agent: every line of every watched log goes
through it, and nearly all lines match nothing. A single regex alternation of
all patterns is no faster than trying them one by one (the ``regex`` engine
tries every branch at every position), so the prefilter is literal instead:
for each pattern the rule set works out literals of which any match must contain
one (its "anchors"), and a line is only handed to the patterns whose anchor it
contains. The anchor test runs on a *key* of the line: its UTF-8 bytes with
ASCII letters lower-cased, digits deleted and each other character reduced to
one placeholder byte. Training logs repeat a few line shapes that differ only
in their numbers (iteration lines, NCCL INFO lines, progress bars), so keys
repeat, and the candidate rules of a key are cached: most lines cost one
translation and one dictionary lookup. A key seen for the first time is tested
against a few short "gates", substrings shared by groups of anchors, and
against the anchors of the gates it contains. A pattern the scanner cannot see
through has no anchor and is always run. Admin patterns are untrusted: every
regex call carries a timeout, and a pattern that hits it counts as not
matching.

Throughput rules are the exception: they match a large share of a training
log's lines, so a batch is searched for them as a whole, its lines joined
into one string, and each line takes the first match that lies within it
(see `patterns.block_scannable` for when that equals searching the line alone).

A large batch (a backlog the agent catches up on) is first handed to GNU grep,
which searches for an alternation of every anchor of the other rules
(``grep -E -i``) faster than Python can look at each line; only the lines it
picks go through the path above.

The modules, in the order a rule goes through them:

- `model`: the rule schema (`Rule`, `RuleKind`, `Fault`, `CheckpointStage`, `Better`),
  `RuleMatch` and `root_cause`;
- `loader`: finding and reading rule files (`default_rules_dir`, `load_rule_files`);
- `patterns`: what a pattern's text tells (`required_literals`, `block_scannable`);
- `prefilter`: line keys, gates and the candidate cache;
- `grep`: the grep prefilter of large batches;
- `engine`: `RuleSet`, which matches lines, in batches, within a time budget.
"""

from ajr_agent.detect.rules.engine import RuleSet
from ajr_agent.detect.rules.loader import default_rules_dir, load_rule_files
from ajr_agent.detect.rules.model import (
    DEFAULT_PRIORITY,
    Better,
    CheckpointStage,
    Fault,
    Rule,
    RuleFileError,
    RuleKind,
    RuleMatch,
    root_cause,
)
from ajr_agent.detect.rules.patterns import required_literals

__all__ = [
    "DEFAULT_PRIORITY",
    "Better",
    "CheckpointStage",
    "Fault",
    "Rule",
    "RuleFileError",
    "RuleKind",
    "RuleMatch",
    "RuleSet",
    "default_rules_dir",
    "load_rule_files",
    "required_literals",
    "root_cause",
]
