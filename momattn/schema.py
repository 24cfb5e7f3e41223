"""Config sections -> typed objects, with one clear error per mistake: the only place that knows how.

    typed(GPTConfig, cfg["model"], "model")       a dataclass from a mapping (unknown key, wrong type -> ConfigError)
    locate("momattn.data.sources.TextFiles", ...) the class or function a `_target_` names
    instantiate(cfg["trainer"], "trainer", ...)   hydra.utils.instantiate, a failure reported as one ConfigError
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import inspect
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException, ValidationError

from momattn.errors import ConfigError, UserError, did_you_mean, first_line

T = TypeVar("T")


def to_plain(node: Any) -> Any:
    """OmegaConf nodes -> plain dicts and lists (resolved); anything else unchanged."""
    if isinstance(node, DictConfig | ListConfig):
        return OmegaConf.to_container(node, resolve=True)
    return node


# ${paths.cache_dir}; not resolvers (${now:...}), not ${..x}, not an escaped \${x}
_REFERENCE = re.compile(r"(?<!\\)\$\{([A-Za-z_][\w.]*)\}")


def interpolation_error(cfg: DictConfig | ListConfig, e: OmegaConfBaseException) -> ConfigError:
    """One line for a failed interpolation, naming the key whose own value fails: paths.cache_dir=${oops} was
    reported at data.cache_dir, which only reads ${paths.cache_dir}. The chain of absolute references is followed
    from the key OmegaConf names while the referenced key fails too."""
    key = getattr(e, "full_key", None) or "?"
    why = str(e).splitlines()[0] if str(e) else type(e).__name__
    try:
        raw = OmegaConf.to_container(cfg, resolve=False)
    except OmegaConfBaseException:
        raw = None
    chain = [key]
    while raw is not None:
        value = raw
        for part in chain[-1].split("."):
            value = value.get(part) if isinstance(value, dict) else None
        failing = None
        for ref in _REFERENCE.findall(value) if isinstance(value, str) else ():
            try:
                OmegaConf.select(cfg, ref)
            except OmegaConfBaseException as inner:  # the same failure (not another one this key also reads)
                if (str(inner).splitlines() or [""])[0] == why:
                    failing = ref
                    break
        if failing is None or failing in chain:
            break
        chain.append(failing)
    read_by = f" (read by {', '.join(reversed(chain[:-1]))})" if len(chain) > 1 else ""
    literal = ("; a '${' meant as text is written '\\${' ('prompt=cost \\${x}'), or put the prompt in a file "
               "(prompt_file=...)" if "not found" in why and chain == ["prompt"] else "")  # (generate.py: review)
    return ConfigError(f"config interpolation failed at {chain[-1]}{read_by}: {why}{literal}")


def known_keys(schema: Any) -> list[str] | None:
    """The keys a dataclass or callable accepts; None when it takes **kwargs (anything goes)."""
    if dataclasses.is_dataclass(schema):
        return [f.name for f in dataclasses.fields(schema) if f.init]
    params = inspect.signature(schema).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _key(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _type_checked(schema: type, node: dict, where: str) -> dict:
    """node's values converted to the dataclass's field types by OmegaConf (a wrong type names the key);
    unchanged where OmegaConf cannot express a field's type."""
    try:
        base = OmegaConf.structured(schema)
    except (OmegaConfBaseException, ValueError, TypeError):
        return node
    try:
        merged = OmegaConf.merge(base, node)
    except OverflowError:  # an int of hundreds of digits for a float field: OmegaConf's traceback (second diff review)
        huge = next((k for k, v in node.items() if isinstance(v, int) and not isinstance(v, bool) and abs(v) > 1e308),
                    "?")
        raise ConfigError(f"{_key(where, huge)}={str(node.get(huge))[:20]}... is too large a number") from None
    except ValidationError as e:
        key = getattr(e, "full_key", None) or getattr(e, "key", "?")
        msg = str(e).splitlines()[0]
        if "is not a ListConfig, list or tuple" in msg:  # e.g. data.paths=a.txt for data.paths=[a.txt]
            value = node.get(str(key).rsplit(".", 1)[-1])
            default = OmegaConf.select(base, str(key), default=None, throw_on_missing=False)
            # the default's form where it has one: optim.betas=[0.9] was then refused as not two numbers
            form = _typed_form(default) if isinstance(default, ListConfig) and len(default) > 1 else f"[{value}]"
            msg = f"a list is needed, got {value!r}; write it in brackets, e.g. {_key(where, key)}={form}"
        elif "is not Optional" in msg or msg.startswith("Incompatible value 'None'"):  # data.paths=null: "field
            # 'paths' is not Optional" said nothing of what to do
            default = OmegaConf.select(base, str(key).split("[", 1)[0], default=None, throw_on_missing=False)
            if isinstance(default, ListConfig):
                wanted = f"a list, e.g. {_key(where, key)}={_typed_form(default) if len(default) else '[a,b]'}"
            else:
                wanted = "a value" + (f", e.g. {_key(where, key)}={shown}" if (shown := _typed_form(default)) else "")
            msg = f"null is not allowed here; give {wanted}"
        elif "is not a valid bool" in msg:
            msg += f"; use {_key(where, key)}=true or false"
        elif "could not be converted to" in msg:  # e.g. model.n_layer=abc: the default shows the form wanted
            name = str(key).split("[", 1)[0]  # an entry of a list (optim.betas[0]): the whole list is what one types
            if shown := _typed_form(OmegaConf.select(base, name, default=None, throw_on_missing=False)):
                msg += f"; e.g. {_key(where, name)}={shown}"
        raise ConfigError(f"{_key(where, key)}: {msg}") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"{where or 'config'}: {str(e).splitlines()[0]}") from None
    plain = OmegaConf.to_container(merged, resolve=True)
    _scalar_lists_checked(schema, plain, node, where)
    return {k: plain[k] for k in node}


def _typed_form(default: Any) -> str | None:
    """A schema default as one types it on the command line ([0.9,0.95], true, 4, cosine); None where it shows
    nothing (null, an empty string)."""
    if isinstance(default, ListConfig):
        return "[" + ",".join(map(str, OmegaConf.to_container(default))) + "]"
    if isinstance(default, bool):
        return str(default).lower()
    return str(default) if isinstance(default, int | float) or (isinstance(default, str) and default) else None


def _scalar_lists_checked(schema: type, plain: dict, node: dict, where: str) -> None:
    """A list of a scalar type holds no list or mapping (OmegaConf lets data.paths=[[a.txt]] through a list[str],
    and it failed deep inside pathlib); a bool is true or false, not a number."""
    try:
        hints = typing.get_type_hints(schema)
    except Exception:  # an annotation that cannot be resolved: nothing to check against
        return
    for key in node:
        hint = hints.get(key)
        options = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
            else (hint,)
        value = node[key]
        if bool in options and isinstance(value, int | float) and not isinstance(value, bool):
            # OmegaConf took any number as a bool: run_eval=7, model.bias=0 (a typo for a count, unnoticed)
            raise ConfigError(f"{_key(where, key)}={value!r} must be true or false")
        for option in options:
            elem = typing.get_args(option)[:1] if typing.get_origin(option) is list else ()
            if elem and elem[0] in (str, int, float, bool) and isinstance(plain.get(key), list):
                bad = next((v for v in plain[key] if isinstance(v, list | dict)), None)
                if bad is not None:
                    raise ConfigError(f"{_key(where, key)}: each entry must be a {elem[0].__name__}, got {bad!r}; "
                                      f"write a flat list, e.g. {_key(where, key)}=[a,b]")


def typed(schema: type[T], node: Mapping | None, where: str, unlisted: tuple[str, ...] = (), **given: Any) -> T:
    """schema(**node, **given): unknown keys, wrong types and missing required keys raise a ConfigError that
    names `where.key` (with the closest valid key); validation in schema.__post_init__ runs once."""
    node = dict(to_plain(node) or {})
    known = known_keys(schema)
    if known is not None:
        settable = [k for k in known if k not in given and k not in unlisted]  # (model's vocab_size and attention
        # are set elsewhere (unlisted, given): naming them as keys to set, refused when set, misled: review)
        for key in node:
            if key not in known:
                raise ConfigError(f"{_key(where, key)} is not a known key.{did_you_mean(key, settable)} "
                                  f"Known keys of {where or 'the top level'}: {', '.join(settable)}")
    if not dataclasses.is_dataclass(schema):
        try:
            return schema(**node, **given)
        except TypeError as e:  # a plain callable that rejects its arguments
            raise ConfigError(f"{where or 'config'}: {schema.__name__} does not accept these settings ({e})") from e
    node = _type_checked(schema, node, where)
    for f in dataclasses.fields(schema):
        if f.init and f.name not in {**node, **given} and f.default is dataclasses.MISSING \
                and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_key(where, f.name)} is required; set it, e.g. {_key(where, f.name)}=...")
    return schema(**node, **given)


def locate(path: str, where: str) -> Any:
    """The object that a dotted path such as 'momattn.data.sources.TextFiles' names."""
    module, _, name = str(path).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"{where}='{path}' cannot be imported ({type(e).__name__}: {e}); give a module path and "
                          f"a name, e.g. {_example(where)}") from None


def _example(where: str) -> str:
    """A class that the section of `where` (trainer.x, logger.x, callbacks.x, data, ...) could name."""
    return {"trainer": "lightning.pytorch.Trainer", "logger": "momattn.loggers.CSVLogger",
            "callbacks": "lightning.pytorch.callbacks.EarlyStopping"}.get(where.split(".")[0],
                                                                          "momattn.data.sources.TextFiles")


def check_arguments(conf: Mapping, where: str) -> None:
    """Every key of a `_target_` mapping is an argument its target takes: checked before any work (a key added
    with +trainer.precison=... failed only at instantiate, after the tokenizer, the data and the model)."""
    section, example = where.split(".")[0], _example(where)
    if isinstance(conf, Mapping) and "_target_" in conf and not str(conf["_target_"] or "").strip():
        # trainer._target_= was Hydra's "Empty path" after the data and model were built
        raise ConfigError(f"{where}._target_ is empty; name the class to build, e.g. {example}, or leave the default")
    if section in ("callbacks", "logger") and "." in where and (not isinstance(conf, Mapping) or "_target_" not in conf):
        # +callbacks.es.monitor=val/loss without a _target_: Hydra handed Lightning the bare mapping as a callback,
        # a traceback inside fit after the data and model were built; +logger.foo=1 an AttributeError (review)
        what = f"{where}={conf!r} is not a mapping" if not isinstance(conf, Mapping) else f"{where} has no _target_"
        raise ConfigError(f"{what}: each entry of {section} names the class to build, e.g. "
                          f"+{where}._target_={example}, with its arguments beside it")
    if not isinstance(conf, Mapping) or not conf.get("_target_"):  # +callbacks.x=y: instantiate says it is a str
        return
    target = locate(conf["_target_"], f"{where}._target_")
    try:
        known = known_keys(target)
    except (ValueError, TypeError):  # a builtin with no signature (builtins.dict): inspect's traceback (review)
        raise ConfigError(f"{where}._target_={conf['_target_']} has no signature to check its arguments against; "
                          f"name a class of the kind {where.split('.')[0]} takes") from None
    if known is None:  # **kwargs: anything goes
        return
    params = inspect.signature(target).parameters
    for key, value in conf.items():
        if str(key).startswith("_"):  # _target_, _partial_, _recursive_, _convert_
            continue
        if key not in known:
            raise ConfigError(f"{_key(where, key)} is not an argument of {conf['_target_']}."
                              f"{did_you_mean(str(key), known)}")
        if (allowed := _choices(params[key].annotation)) is not None and not any(
                value is a or (type(value) is type(a) and value == a) for a in allowed):
            # Lightning read enable_progress_bar=maybe (or deterministic=maybe, save_last=maybe) as true
            raise ConfigError(f"{_key(where, key)}={value!r} must be {_one_of(allowed)}")
        if _alone(params[key].annotation, datetime.timedelta) and value is not None and not (
                isinstance(value, Mapping) and value.get("_target_")):  # an int failed inside Lightning, at step 1
            raise ConfigError(f"{_key(where, key)}={value!r} must be a time span, e.g. "
                              f"{_key(where, key)}={{_target_: datetime.timedelta, minutes: 10}}, or null")
        if (text := _alone(params[key].annotation, str)) is not None and not isinstance(value, str) and not (
                value is None and text == "optional"):
            # a list or number where Lightning wants a string failed deep inside it, some only at the first
            # checkpoint (callbacks.model_checkpoint.filename=[a]: every step until then was lost)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            quoted = f" (quote a number: '{_key(where, key)}=\"{value}\"')" if number else ""
            raise ConfigError(f"{_key(where, key)}={value!r} must be a string"
                              f"{' or null' if text == 'optional' else ''}{quoted}")
        if (kinds := _scalars(params[key].annotation)) and not _is_one_of(value, kinds):
            # save_top_k=1.5, every_n_train_steps=nan (no best checkpoint, in silence), version=[1], dirpath=123
            # (a TypeError deep inside Lightning, not naming the key)
            names = {int: "an integer", str: "a string", Path: "a path", type(None): "null"}
            wanted = " or ".join(dict.fromkeys(names[k] for k in kinds if k is not str or Path not in kinds))
            quoted = f" (quote it: '{_key(where, key)}=\"{value}\"')" if str in kinds and isinstance(
                value, int | float) and not isinstance(value, bool) else ""
            raise ConfigError(f"{_key(where, key)}={value!r} must be {wanted}{quoted}")


def _scalars(annotation: Any) -> tuple | None:
    """The types an argument typed with int, str, Path and None only takes (Optional[int]: (int, NoneType)),
    where int or Path is among them; None for any other annotation (floats, bools and the rest have their own
    checks, or none)."""
    parts = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) \
        else (annotation,)
    if not parts or not all(p in (int, str, Path, type(None)) for p in parts) or not ({int, Path} & set(parts)):
        return None
    return tuple(parts)


def _is_one_of(value: Any, kinds: tuple) -> bool:
    if isinstance(value, bool):  # an int to Python, not to a user who typed true
        return False
    return (value is None and type(None) in kinds) or (isinstance(value, int) and int in kinds) or (
        isinstance(value, str) and (str in kinds or Path in kinds)) or (isinstance(value, Path) and Path in kinds)


def _alone(annotation: Any, kind: type) -> str | None:
    """"required" for an annotation that is `kind` itself, "optional" for `kind` | None (also as the text of a
    postponed annotation: "Optional[kind]", "kind | None"); None for any other."""
    name = kind.__name__
    if annotation in (kind, name):
        return "required"
    if annotation in (f"Optional[{name}]", f"{name} | None", f"Union[{name}, None]", f"Union[{name}, NoneType]"):
        return "optional"
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and set(typing.get_args(annotation)) == {
            kind, type(None)}:
        return "optional"
    return None


def _choices(annotation: Any) -> tuple | None:
    """The values an argument typed with bool, None and Literal only can take (bool | Literal['warn'] | None:
    (True, False, 'warn', None)); None for any other type. Literal-only ones without bool (Trainer.precision) are
    left to their own checks."""
    names = {"bool": bool, "Optional[bool]": bool | None, "bool | None": bool | None}
    annotation = names.get(annotation, annotation) if isinstance(annotation, str) else annotation
    out: list = []
    for part in typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) \
            else (annotation,):
        if part is bool:
            out += [True, False]
        elif part is type(None):
            out.append(None)
        elif typing.get_origin(part) is typing.Literal:
            out += typing.get_args(part)
        else:
            return None
    return tuple(out) if True in out else None


def _one_of(allowed: tuple) -> str:
    words = ["true or false" if a is True else "null" if a is None else repr(a) for a in allowed if a is not False]
    return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]


def instantiate(conf: Mapping, what: str, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, with a failure reported as one ConfigError naming the config entry."""
    import hydra

    try:
        return hydra.utils.instantiate(conf, **kwargs)
    except Exception as e:
        cause = e.__cause__ or e  # momattn's own message whole (a class of ours says what to do): others cut
        raise ConfigError(f"{what} could not be created: "
                          f"{first_line(cause, 2000 if isinstance(cause, UserError) else 300)}") from e


def instantiate_all(node: Mapping | None, what: str) -> list:
    """Each entry of a config group such as callbacks, in order; null entries are skipped."""
    return [instantiate(conf, f"{what}.{name}") for name, conf in (node or {}).items() if conf is not None]
