"""axengine backend: compiled .axmodel files on the AX650N NPU through pyaxengine.

Two generations of pyaxengine exist on boards in the field:

- current: ``InferenceSession(path, providers=...)``, ``get_inputs(shape_group)``,
  ``run(None, feed, shape_group=g)``; it checks exact shapes and dtypes per group;
- older (what AXERA's Python demo used): ``InferenceSession.load_from_model(path)``,
  ``set_runtime_context(group_id=g)``, ``run(feed)``; it exposes input names only and checks
  nothing, so shapes come from the axmodel contract (prefill length from the file name, KV
  length from ``kv_len``).

pyaxengine's ``run`` memmoves every fed input into the session's persistent CMM input buffer
and flushes it, then copies every output out (axengine/_axe.py). Feeding a whole (1, 1023, 256)
KV cache therefore costs a copy per layer per token on this runtime, unlike onnxruntime.

What differs between AXERA's releases (../shared/pyaxengine/README.md), handled here without
reading version strings (releases 0.1.2rc0, 0.1.3rc0 and 0.1.3.rc3 all call themselves 0.1.3):

- 0.1.2rc0 and 0.1.3rc0 return outputs as views into the session's reused CMM output buffer:
  any output that does not own its data is copied before the next run overwrites it;
- 0.1.0rc1 and 0.1.1rc0 have no ``shape_group`` in ``run()`` and always run group 0: a model
  with several shape groups is refused at load, in one line naming the release and the minimum;
- every release prints ``[INFO]`` lines on stdout at import and per session: they go to the
  log instead (fd 1 is redirected while pyaxengine is imported and sessions are created);
- ``providers`` must be a str or a list (a tuple is refused): any sequence is passed as a list.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import re
import sys
import tempfile

import ml_dtypes
import numpy as np

from ..errors import ModelDirError, RuntimeFailure
from .base import Runtime, Session, TensorSpec

log = logging.getLogger('qwen_vl_ros')
MIN_SHAPE_GROUP_RELEASE = '0.1.2rc0'  # the first pyaxengine whose run() takes shape_group


@contextlib.contextmanager
def prints_to_log():
    """Send what is written to stdout (fd 1, Python and C alike) to the log while inside.

    pyaxengine prints ``[INFO]`` lines at import and for each session; on stdout they would
    break ``qwen-vl-describe --json`` and every other machine-read output. Each captured line is
    logged at INFO. The redirection is process-wide: use it only around pyaxengine calls.
    """
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no stdout at all (a daemon): nothing to keep clean
        yield
        return
    with tempfile.TemporaryFile(mode='w+b') as sink:
        os.dup2(sink.fileno(), 1)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
            sink.seek(0)
            for line in sink.read().decode('utf-8', 'replace').splitlines():
                if line.strip():
                    log.info('pyaxengine: %s', line.rstrip())


def import_axengine():
    """``import axengine`` with its prints sent to the log; ImportError as pyaxengine raises it."""
    with prints_to_log():
        import axengine
    return axengine


def _release(axengine) -> str:
    """Name the installed pyaxengine as well as it can: version and location."""
    try:
        from importlib.metadata import version
        ver = version('axengine')
    except Exception:  # noqa: BLE001 (not installed by pip: unpacked on sys.path)
        ver = 'release unknown'
    where = os.path.dirname(os.path.dirname(os.path.abspath(axengine.__file__)))
    return f'pyaxengine {ver} at {where}'


def _provider_list(providers):
    """Give providers as pyaxengine takes them: a str or a list (it refuses a tuple)."""
    if providers is None or isinstance(providers, str):
        return providers
    return list(providers)


def _own(arrays) -> list:
    """Copy every output that does not own its data (a view into a reused CMM buffer)."""
    return [a if a.flags.owndata else a.copy() for a in arrays]


def _dtype(d) -> np.dtype:
    if isinstance(d, str) and 'bfloat16' in d:
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(d)


def _specs(args) -> list[TensorSpec]:
    return [TensorSpec(a.name, tuple(int(s) for s in a.shape), _dtype(a.dtype)) for a in args]


def _probe_groups(sess) -> tuple:
    """Count shape groups: pyaxengine has no public count, so ask until it refuses."""
    groups = []
    for g in range(64):
        try:
            sess.get_inputs(shape_group=g)
        except (ValueError, IndexError):
            break
        groups.append(g)
    return tuple(groups) or (0,)


class _SpecTableSession(Session):
    """A session whose specs per shape group are known once at load time."""

    _in: dict
    _out: dict

    def inputs(self, group: int = 0) -> list[TensorSpec]:
        """Input specs of a shape group."""
        return self._in[group]

    def outputs(self, group: int = 0) -> list[TensorSpec]:
        """Output specs of a shape group."""
        return self._out[group]


class AxSession(_SpecTableSession):
    """A model on the current pyaxengine API (shape groups, checked feeds)."""

    def __init__(self, path: str, providers, provider_options):
        axengine = import_axengine()
        self.path = path
        try:
            with prints_to_log():
                self._sess = axengine.InferenceSession(
                    path, providers=_provider_list(providers), provider_options=provider_options)
        except Exception as e:  # pyaxengine raises plain RuntimeError/ValueError/...
            raise ModelDirError(f'axengine cannot load {path}: {e}') from e
        self.groups = _probe_groups(self._sess)
        if len(self.groups) > 1 and \
                'shape_group' not in inspect.signature(self._sess.run).parameters:
            raise ModelDirError(
                f'{_release(axengine)} cannot run {os.path.basename(path)}: its run() has no '
                f'shape_group (it always runs group 0) and the model has {len(self.groups)} shape '
                f'groups; pyaxengine {MIN_SHAPE_GROUP_RELEASE} or newer is needed')
        self._in = {g: _specs(self._sess.get_inputs(shape_group=g)) for g in self.groups}
        self._out = {g: _specs(self._sess.get_outputs(shape_group=g)) for g in self.groups}

    def kv_cache(self, decode_group: int):
        """Return the KV cache inside this session's own input buffers (None if not possible)."""
        from .axengine_kv import attach
        return attach(self._sess, decode_group)

    def run(self, feed: dict, group: int = 0) -> list[np.ndarray]:
        """Run a group; every output returned owns its data (older releases give views)."""
        try:
            if len(self.groups) > 1:
                return _own(self._sess.run(None, feed, shape_group=group))
            return _own(self._sess.run(None, feed))
        except Exception as e:
            raise RuntimeFailure(f'axengine failed on {self.path} group {group}: {e}') from e


class LegacyAxSession(_SpecTableSession):
    """A model on the older pyaxengine API: names only, shapes from the axmodel contract."""

    def __init__(self, path: str, specs: dict, out_specs: dict):
        axengine = import_axengine()
        self.path = path
        try:
            with prints_to_log():
                self._sess = axengine.InferenceSession.load_from_model(path)
        except Exception as e:
            raise ModelDirError(f'axengine cannot load {path}: {e}') from e
        # The demo's wheel has get_input_names(); another old wheel has get_inputs() -> names.
        get_names = getattr(self._sess, 'get_input_names', None) or self._sess.get_inputs
        names = [n if isinstance(n, str) else n.name for n in get_names()]
        # The contract's input order; the runtime's own names win where it reports them.
        self._in = {g: [TensorSpec(n, s.shape, s.dtype) for n, s in zip(names, specs[g])]
                    if len(names) == len(specs[g]) else specs[g] for g in specs}
        # Outputs likewise: the runner's names (its order) where it reports them.
        out_names = list(getattr(self._sess, 'get_output_names', lambda: [])())
        self._out = {g: [TensorSpec(n, s.shape, s.dtype) for n, s in zip(out_names, out_specs[g])]
                     if len(out_names) == len(out_specs[g]) else out_specs[g] for g in out_specs}
        self.groups = tuple(sorted(specs))
        self._group = None

    def run(self, feed: dict, group: int = 0) -> list[np.ndarray]:
        """Select the group's runtime context (only when it changes) and run."""
        try:
            if len(self.groups) > 1 and group != self._group:
                self._sess.set_runtime_context(group_id=group)
                self._group = group
            out = self._sess.run(feed)
        except Exception as e:
            raise RuntimeFailure(f'axengine failed on {self.path} group {group}: {e}') from e
        # Some releases return a dict keyed by output name, others a list.
        return _own(out.values() if isinstance(out, dict) else out)


def _legacy_layer_specs(path: str, hidden: int, kv_dim: int, kv_len: int):
    """Contract shapes of a single-prefill layer, for the older runtime (no introspection)."""
    m = re.search(r'_p(\d+)_', path)
    if not m:
        raise ModelDirError(f'{path}: cannot tell the prefill length from the file name')
    p = int(m.group(1))
    bf16 = np.dtype(ml_dtypes.bfloat16)
    u32 = np.dtype(np.uint32)

    def group(s, cache, mask):
        return [TensorSpec('K_cache', cache, bf16), TensorSpec('V_cache', cache, bf16),
                TensorSpec('indices', (3 if s > 1 else 1, s), u32),
                TensorSpec('input', (1, s, hidden), bf16), TensorSpec('mask', mask, bf16)]

    def outs(s):
        return [TensorSpec('K_cache_out', (1, s, kv_dim), bf16),
                TensorSpec('V_cache_out', (1, s, kv_dim), bf16),
                TensorSpec('output', (1, s, hidden), bf16)]

    ins = {0: group(1, (1, kv_len, kv_dim), (1, 1, kv_len + 1)),
           1: group(p, (1, 1, hidden), (1, p, p))}
    return ins, {0: outs(1), 1: outs(p)}


def legacy_specs(role: str, path: str, files, kv_len: int):
    """(input specs, output specs) per group from the axmodel contract, for the older runtime."""
    cfg = files.config
    bf16 = np.dtype(ml_dtypes.bfloat16)
    if role == 'layer':
        return _legacy_layer_specs(path, cfg.hidden_size, cfg.kv_dim, kv_len)
    if role == 'post':
        return ({0: [TensorSpec('input', (1, 1, cfg.hidden_size), bf16)]},
                {0: [TensorSpec('output', (1, 1, cfg.vocab_size), bf16)]})
    if role == 'vision':
        h, w = files.vision_size_hint or (448, 448)
        p, m = cfg.patch_size, cfg.spatial_merge_size
        seq = (h // p) * (w // p)
        per_patch = cfg.temporal_patch_size * p * p
        return ({0: [TensorSpec('hidden_states', (1, seq, per_patch, 3), np.dtype(np.uint8))]},
                {0: [TensorSpec('output', (seq // m // m, cfg.hidden_size),
                                np.dtype(np.float32))]})
    raise ValueError(f'unknown model role {role!r}')


def _placement(sess) -> str:
    """Say which provider (and card) a pyaxengine session runs on, for the log and diagnostics."""
    get = getattr(sess, 'get_providers', None)
    provider = get() if get else type(sess).__name__
    provider = provider if isinstance(provider, str) else ', '.join(provider)
    inner = getattr(sess, '_sess', None)
    if type(inner).__name__ == 'AXCLRTSession':
        soc = getattr(inner, 'soc_name', 'AX650N')
        return (f'{provider} (M.2 card {getattr(inner, "_device_index", 0)}, device id '
                f'{getattr(inner, "_device_id", "?")}, {soc})')
    if provider == 'AxEngineExecutionProvider':
        return f'{provider} (on-board NPU)'
    return provider


class AxEngineRuntime(Runtime):
    """Opens axmodels with pyaxengine; the API generation is detected once at start."""

    name = 'axengine'

    def __init__(self, providers=None, provider_options=None):
        axengine = import_axengine()  # ImportError ("No providers found") without NPU libraries
        self.legacy = hasattr(axengine.InferenceSession, 'load_from_model')
        self.providers = providers
        self.provider_options = provider_options
        if self.legacy:
            self.where = 'load_from_model runtime (on-board NPU)'

    def open(self, paths: dict, role: str = '', files=None, kv_len: int = 1023) -> Session:
        """Open one .axmodel (every shape group lives in the one file)."""
        path = paths[min(paths)]
        if self.legacy:
            return LegacyAxSession(path, *legacy_specs(role, path, files, kv_len))
        sess = AxSession(path, self.providers, self.provider_options)
        if not self.where:
            self.where = _placement(sess._sess)
        return sess
