"""What a checkpoint may name. A checkpoint is loaded weights-only, so its pickle runs no code; but its stored run
config and command line are data that momattn acts on, and a `_target_` in them is an import and a call: a data
section naming `os.system` ran a shell command in evaluate.py. Only classes named exactly as momattn's own configs
name them (and Lightning's exported callbacks and loggers but LambdaCallback) are taken from a checkpoint, a data
section's only data sources; a recorded command line names no Hydra setting, resolver or sweep; and the paths a
stored ModelCheckpoint state names are kept only inside its own folder. A class of your own, allowed by name:

    MOMATTN_TRUSTED_TARGETS=mypkg.data.MySource,mypkg.callbacks.   # exact names, or prefixes ending with '.'

The classes train.py's own command line names are trusted in its process (its run reads its checkpoints back).
A run folder's .hydra/overrides.yaml (the command line a resume repeats) is checked as a checkpoint's is: a run
folder from elsewhere named its own _target_ (a data section's class is called by momattn itself, past Hydra's own
blocklist) and folders to write into (found by review). Neither may choose where a run writes or caches: a
recorded `paths.*`, `*.dirpath`, `*.save_dir`, `*.cache_dir`, ... is refused, and taken when today's command
line gives it again.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from momattn.errors import CheckpointError
from momattn.quoting import printable, shell_quote

ENV = "MOMATTN_TRUSTED_TARGETS"
UNTRUSTED_RESUME = "MOMATTN_RESUME_FROM_CHECKPOINT"  # set for a resume whose command line came from a checkpoint
# data sources no shipped config names but older runs' checkpoints may (and a test's fault injection)
DATA_EXTRA = ("momattn.data.sources.StaiccCorpus", "momattn.data.sources.TextFiles", "momattn.data.sources.HubCorpus",
              "momattn.data.streaming.StreamingHubCorpus", "momattn.data.ginc.GincCorpus")
FAULTS = "momattn.faults.FaultInjection"  # read (a test's checkpoints record it), never repeated by a resume
EXTRA = (*DATA_EXTRA, FAULTS)
# the sections of a stored run config that evaluate.py and analyze.py build objects from: data sources only
BUILT_FROM_CONFIG = ("data", "eval")
# resolvers a recorded value may call: they read (the run's Hydra settings, the time, an environment variable)
RESOLVERS = {"hydra", "now", "oc.env", "oc.select"}
PATH_KEYS = ("best_model_path", "kth_best_model_path", "last_model_path")
# settings that choose where a run writes (or caches what it reads): not taken from a recorded command line. A
# checkpoint that recorded paths.output_dir and a ModelCheckpoint dirpath wrote its run into another folder and
# deleted a file there as an old top-k checkpoint (found by review)
WRITE_KEYS = ("dirpath", "save_dir", "cache_dir", "default_root_dir", "root_dir", "output_dir", "log_dir", "dir")


def _conf_targets(sub: str = "") -> frozenset[str]:
    import yaml

    from momattn.cli import CONF_DIR

    found: set[str] = set()
    for path in (Path(CONF_DIR) / sub).rglob("*.yaml"):
        try:
            found.update(targets(yaml.safe_load(path.read_text())))
        except (OSError, yaml.YAMLError):
            continue
    return frozenset(found)


@functools.cache
def _trusted_names() -> frozenset[str]:
    """Every class a checkpoint may name, exactly: the shipped configs' targets, older runs' sources, and
    Lightning's exported callbacks and loggers (not LambdaCallback, which calls what it is given)."""
    import lightning.pytorch.callbacks as callbacks
    import lightning.pytorch.loggers as loggers

    lightning = {f"{m.__name__}.{n}" for m in (callbacks, loggers) for n in m.__all__ if n != "LambdaCallback"}
    return frozenset({*_conf_targets(), *EXTRA, *lightning})


@functools.cache
def _data_names() -> frozenset[str]:
    return frozenset({*_conf_targets("data"), *DATA_EXTRA})


_OWN: set[str] = set()  # the targets this process's own training command line names


def allow_own(names) -> None:
    """train.py's command line names these classes itself (data._target_=mypkg.MySource): the checkpoints its run
    writes, read back in this process (the resume check, the end-of-run evaluation), may name them too."""
    _OWN.update(names)


def _given(target: str, own: bool = True, env: bool = True) -> bool:
    given = [t.strip() for t in os.environ.get(ENV, "").split(",") if t.strip()] if env else []
    return (own and target in _OWN) or any(target == t or (t.endswith(".") and target.startswith(t)) for t in given)


def trusted(target: str, data: bool = False, own: bool = True, env: bool = True) -> bool:
    """Whether a stored config may name `target`, exactly (a dotted path walks attributes: a trusted module's
    `.Path.write_text` is not the module); data: as a data source."""
    return target in (_data_names() if data else _trusted_names()) or _given(target, own, env)


def targets(node) -> Iterator[str]:
    """Every `_target_` value in a nested config (dicts and lists), as strings."""
    if isinstance(node, Mapping):
        for k, v in node.items():
            if k == "_target_":
                yield str(v)
            else:
                yield from targets(v)
    elif isinstance(node, list | tuple):
        for v in node:
            yield from targets(v)


def _refused(target: str, where: str, resume: bool = False) -> CheckpointError:
    again = "give that override again on today's command line, or " if resume else ""
    return CheckpointError(
        f"{where} names _target_={target}, which is not a class momattn takes from a checkpoint or a run folder: "
        "their config is data, and a _target_ in it is imported and called where the tools build from it (it could "
        "run any code), so every tool that reads the checkpoint refuses it. Use a checkpoint "
        f"you trust; if it is your own run with a class of your own, {again}allow the class by name: "
        f"{ENV}=<module.Class>")


def check_config(config: Mapping | None, path) -> None:
    """The targets of the sections evaluate.py and analyze.py build from a checkpoint's run config (data sources),
    and no interpolation anywhere in it: train.py stores the config resolved, and the tools that build from it
    resolve what they read (a recorded ${oc.env:HF_TOKEN} in a data URL was sent to that URL: found by review)."""
    for section in BUILT_FROM_CONFIG:
        for t in targets((config or {}).get(section)):
            if not trusted(t, data=True):
                raise _refused(t, f"checkpoint '{path}': its run config's {section} section")
    if found := _interpolation(config):
        raise CheckpointError(f"checkpoint '{path}': its run config's {found[0]} is {found[1]!r}, an interpolation "
                              "(${...}), which the config train.py stores never holds (it is resolved when saved): "
                              "the checkpoint was not written by train.py; use a checkpoint you trust")


def _interpolation(node, key: str = "") -> tuple[str, str] | None:
    """(dotted key, text) of the first string holding '${' in a nested config, or None."""
    items = node.items() if isinstance(node, Mapping) else enumerate(node) if isinstance(node, list | tuple) else ()
    for k, v in items:
        where = f"{key}.{k}" if key else str(k)
        if isinstance(v, str) and "${" in v:
            return where, v
        if found := _interpolation(v, where):
            return found
    return None


# an interpolation inside an interpolation's name: ${oc.${x}:...} calls whichever resolver ${x} names, which a
# list of the names written out misses (found by review); train.py's configs never build a name
COMPUTED = "named by an interpolation (${a.${b}:...})"


def resolvers(text: str) -> set[str]:
    """The resolvers an OmegaConf string calls (${name:...}); a plain ${key} reference calls none; COMPUTED where an
    interpolation's name holds another interpolation, which may name any resolver."""
    return set(re.findall(r"\$\{\s*([\w.]+)\s*:", text)) | (
        {COMPUTED} if re.search(r"\$\{\s*[\w.\[\]\s]*\$\{", text) else set())


def check_overrides(overrides, source: str, repeat: bool = False, own: bool = True, built: bool = False,
                    env: bool = True, classes: bool = True) -> None:
    """The command line a checkpoint or a run folder records (`source` names it, e.g. "checkpoint 'x.ckpt': its
    recorded command line"): no Hydra setting (hydra.job.env_set sets environment variables), no sweep (train.py
    records a job's own values), no resolver but those that read (oc.create made a _target_ out of a string), and
    every `_target_` it names or nests trusted. repeat: a resume repeats them: no folder to write into either
    (WRITE_KEYS), and no fault injection (a recorded one, under another key than callbacks.fault, which a resume
    leaves out, SIGKILLed every resume). built: only the targets of the sections a read-only tool builds
    (BUILT_FROM_CONFIG): evaluate.py read your own run's checkpoint naming a callback class of your own only with
    MOMATTN_TRUSTED_TARGETS, though it builds no callback; a resume checks every target it repeats. classes=False:
    no target is checked (a command line composed, not built: what is kept of it is checked again)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for line in overrides or []:
        where = f"{source} ({printable(line)})"
        try:
            o = parser.parse_override(str(line))
        except Exception:
            raise CheckpointError(f"{where} does not parse as an override: it is damaged") from None
        key = o.key_or_group
        # (a run folder's file was blamed on the checkpoint: found by review)
        what = "that file" if "the run folder's saved command line" in source else "the checkpoint"
        if o.is_hydra_override() or key.startswith("hydra"):
            raise CheckpointError(f"{where} sets Hydra itself, which train.py never records; {what} was not "
                                  "written by train.py")
        if o.is_sweep_override():
            raise CheckpointError(f"{where} is a sweep, which train.py never records; {what} was not written by "
                                  "train.py")
        if repeat and "oc.env" in resolvers(str(line)):  # an environment variable (HF_TOKEN, WANDB_API_KEY) sent
            # out in a recorded data URL or hub name (found by the third review)
            raise CheckpointError(f"{where} reads an environment variable (oc.env), which a resume does not repeat "
                                  "from a recorded command line; if it is your own run, give that override again on "
                                  "today's command line")
        if bad := resolvers(str(line)) - RESOLVERS:
            raise CheckpointError(f"{where} calls the resolver {sorted(bad)[0]}, which train.py's configs never "
                                  "record; a checkpoint's command line may only read values (${key}, oc.env, now)")
        if repeat and ({"_args_", "_partial_"} & {p for k, _ in _nodes(key, o.value()) for p in k.split(".")}):
            # positional arguments name no key: ModelCheckpoint's first is its dirpath, CSVLogger's its save_dir
            # (a recorded `_args_: [/elsewhere]` wrote and deleted there: found by the second review)
            raise CheckpointError(f"{where} passes positional arguments (_args_) or a partial (_partial_), which "
                                  "train.py's configs never record and a resume does not repeat; if it is your own "
                                  "run, give that override again on today's command line")
        if repeat and not (all(_in_run(v) for v in _written(key, o.value()))
                           and all(_plain_name(v) for v in _named(key, o.value()))):
            raise CheckpointError(f"{where} chooses a folder to write into, which is not taken from a checkpoint or "
                                  "a run folder (one from elsewhere could write, or delete files, anywhere you can); "
                                  f"if it is your own run, give {key}=... again on today's command line")
        if not classes or built and key.split(".")[0] not in BUILT_FROM_CONFIG:
            continue
        found = [o.get_value_element_as_str()] if key.split(".")[-1] == "_target_" else []
        for t in [*found, *targets(o.value())]:
            if not trusted(t, data="data" in key.split("."), own=own, env=env) or \
                    (repeat and t == FAULTS and not _given(t, own, env)):
                raise _refused(t, where, resume=repeat)


def resume_prefix(folder) -> str:
    """'MOMATTN_TRUST_LINKS=1 ' where the run's folder links out of itself (its own checkpoints/ on another disk: the
    printed resume command was refused), else ''; said where this command had it set too (for itself alone, maybe)."""
    return f"{LINKS_ENV}=1 " if link_out(folder) is not None else ""


def given_again(job) -> str:
    """unrepeated(the Hydra job's command line) as a command line's tail (' k=v ...', shell-quoted), for a printed
    resume command (a job without overrides: '')."""
    return "".join(f" {shell_quote(o)}" for o in unrepeated(list(getattr(job, "overrides", None) or ())))


def unrepeated(overrides: list[str]) -> list[str]:
    """Of a run's own command line, what its resume does not take from the saved one (a folder to write into, an
    environment variable, a class of the user's own...): the resume command printed for the run repeats them,
    since they are the user's (a run with paths.cache_dir=/scratch/cache was told a resume command that was
    refused: third review)."""
    out = []
    for o in overrides:
        if o.split("=", 1)[0].lstrip("+~").startswith(("hydra", "ckpt_path")) or injected(o, overrides):
            continue  # (a resume drops an injected fault: re-injected, it would stop the resumed run at the same step)
        try:  # this process trusts its own classes, and those MOMATTN_TRUSTED_TARGETS named for this command alone:
            check_overrides([o], "", repeat=True, own=False, env=False)  # a resume, typed later, neither (review)
        except CheckpointError:
            out.append(o)
    return out


def injected(override: str, overrides: list[str]) -> bool:
    """Whether `override` sets a fault-injection callback of `overrides` (callbacks.fault*, or any callbacks.X whose
    _target_ is FaultInjection): a resume leaves it out (a recorded +callbacks.inj one was refused, with the advice
    to trust momattn's own class, which would have injected the fault again: DDP review)."""
    def key(o: str) -> str:
        return o.split("=", 1)[0].lstrip("+~")

    sections = {"callbacks.fault"} | {
        key(o).removesuffix("._target_") for o in overrides if key(o).startswith("callbacks.") and FAULTS in o
        and (key(o).endswith("._target_") or key(o).count(".") == 1)}
    return any(key(override) == s or key(override).startswith(s if s == "callbacks.fault" else s + ".")
               for s in sections)


def _nodes(key: str, value) -> Iterator[tuple[str, object]]:
    """Every (dotted key, value) of an override's value, itself first: a list's items under their index."""
    yield key, value
    items = value.items() if isinstance(value, Mapping) else enumerate(value) if isinstance(value, list | tuple) else ()
    for k, v in items:
        yield from _nodes(f"{key}.{k}", v)


def _written(key: str, value) -> Iterator:
    """The values of an override that choose a folder to write into: where the key is such a setting (paths.x, or
    a WRITE_KEYS name; `paths=<option>` picks a shipped file of conf/paths), itself or nested."""
    return (v for k, v in _nodes(key, value) if k.startswith("paths.") or k.split(".")[-1] in WRITE_KEYS)


def _named(key: str, value) -> Iterator:
    """The values of a logger's name, version and sub_dir in an override (Lightning writes to save_dir/name/version:
    a recorded `name: ../../elsewhere` led out of the run, for any logger but the CSVLogger start-up checks)."""
    return (v for k, v in _nodes(key, value)
            if k.split(".")[0] == "logger" and k.split(".")[-1] in ("name", "version", "sub_dir"))


def _plain_name(value) -> bool:
    return value is None or ("/" not in str(value) and "\\" not in str(value) and str(value) not in (".", ".."))


def _in_run(value) -> bool:
    """A folder inside the run's own, as the configs write it (${paths.output_dir}/logs): the run's folder then
    plain names, none '.' or '..' and no interpolation (`.${now:.}` made '..' of a resolver: second review)."""
    m = re.fullmatch(r"\$\{(?:paths\.output_dir|hydra:runtime\.output_dir)\}((?:/[^/$]*)*)", str(value).strip())
    return m is not None and all(part not in (".", "..") for part in m.group(1).split("/")[1:])


def _same_file(a, b) -> bool:
    return os.path.realpath(os.path.expanduser(str(a))) == os.path.realpath(os.path.expanduser(str(b)))


def mark_resume_from_checkpoint(own_overrides: list[str], ckpt: str) -> None:
    """A resume of `ckpt` whose command line comes from the checkpoint itself: train.py checks every target of the
    composed config that resumes it (a resolver could still make one) and trusts only those its own command line
    names."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    own = []
    for o in OverridesParser.create().parse_overrides(own_overrides):
        if o.key_or_group.split(".")[-1] == "_target_":
            own.append(o.get_value_element_as_str())
        if not o.is_sweep_override():
            own.extend(targets(o.value()))
    os.environ[UNTRUSTED_RESUME] = json.dumps({"ckpt": ckpt, "own": own})


def check_resumed_config(config: Mapping) -> None:
    """train.py's composed config: where its command line came from a checkpoint, every target must be trusted or
    named on today's command line; otherwise the whole config is the user's, and its classes are trusted."""
    try:
        marked = json.loads(os.environ.get(UNTRUSTED_RESUME) or "null")
    except ValueError:
        marked = None
    if not isinstance(marked, dict) or not marked.get("ckpt") or not config.get("ckpt_path") \
            or not _same_file(config["ckpt_path"], marked["ckpt"]):
        allow_own(targets(config))  # (a mark of another command in this process, e.g. a test's, is not this one's)
        return
    mine = set(marked.get("own") or [])
    for t in targets(config):
        if t not in mine and not trusted(t):
            raise _refused(t, "the config this resume takes from its checkpoint")
    allow_own(mine)


def clean_checkpoint_paths(ckpt: dict) -> None:
    """A stored ModelCheckpoint state's paths (best_k_models, last_model_path, ...) kept only where they are
    plain files directly in its own dirpath: Lightning deletes an old 'last' or top-k file when it saves a new
    one, and a crafted state pointing at local:///anything (or a missing dirpath, which Lightning takes as this
    folder) removed that folder on resume."""
    for state in (ckpt.get("callbacks") or {}).values():
        if not isinstance(state, dict) or not any(k in state for k in ("best_k_models", *PATH_KEYS)):
            continue
        folder = state.get("dirpath")
        if not isinstance(folder, str):  # Lightning takes a missing dirpath as the current one: nothing kept
            state["dirpath"] = folder = "<not recorded>"
        for k in PATH_KEYS:
            if k in state and not _inside(state[k], folder):
                state[k] = ""
        if isinstance(state.get("best_k_models"), dict):
            state["best_k_models"] = {p: v for p, v in state["best_k_models"].items() if _inside(p, folder)}
        elif "best_k_models" in state:
            state["best_k_models"] = {}


def _inside(path, folder: str) -> bool:
    """A plain file path directly in folder (no fsspec protocol, no '..' out of it)."""
    return (isinstance(path, str) and "://" not in path and "://" not in folder and folder != "<not recorded>"
            and Path(path).resolve().parent == Path(folder).resolve())


LINKS_ENV = "MOMATTN_TRUST_LINKS"  # =1: the links in a resumed run folder are the user's own (a disk elsewhere)


def check_links(folder: Path) -> None:
    """A run folder a resume writes into holds no symbolic link out of it (anywhere below it) unless the user says
    the links are theirs: a downloaded folder's csv/hparams.yaml linked to a file of the user's was overwritten with the run's
    config, its train.log link appended to, a linked csv/ or checkpoints/ had files written and replaced in the
    folder it pointed at (found by the second review)."""
    if os.environ.get(LINKS_ENV) != "1" and (path := link_out(folder)) is not None:
        raise CheckpointError(
            f"the run folder {folder} holds a symbolic link, {path} -> {os.readlink(path)}: a resume writes through it "
            "(a run folder from elsewhere could make it overwrite any file you can write). If the links are your own "
            f"(checkpoints/ on another disk), set {LINKS_ENV}=1")


def link_out(folder) -> Path | None:
    """The first symbolic link below `folder` that leads out of it, or None. W&B's own folders (`wandb/`, at any
    depth: a sweep's jobs, a save_dir inside the run) are passed over: their links (debug-core.log ->
    ~/.cache/wandb/...) are not written through by a resume, whose segment is a folder of its own and whose top
    links W&B makes afresh (a W&B run's resume was refused: found by review)."""
    real, top = os.path.realpath(folder), Path(folder)
    if not top.is_dir():
        return None
    for root, dirs, files in os.walk(top):  # (links to folders are listed in dirs, and not walked into)
        if "wandb" in dirs and not (Path(root) / "wandb").is_symlink():
            dirs.remove("wandb")
        for name in [*dirs, *files]:
            path = Path(root) / name
            if path.is_symlink() and os.path.commonpath([os.path.realpath(path), real]) != real:  # (save_last=link:
                return path  # last.ckpt links a best checkpoint beside it, inside; realpath: a loop is no error)
    return None
