"""The node's parameters: one table with default, description, range and whether it is read-only.

Every parameter is declared with a ParameterDescriptor (description, FloatingPointRange /
IntegerRange, read_only). Read-only ones need a reload of the model or a new subscription; the
others (prompt, period_s, video_frames, video_interval_s, the sampling parameters,
max_new_tokens, max_image_age_s, max_pixels, request_timeout_s, bit_depth) take effect with the
next request. The video parameters can change at run time because the ring buffer lives in the
node's frame store: resizing it needs neither the model nor the subscription.

Sampling parameters use sentinels that mean "what the model's generation_config.json says":
temperature < 0, top_k < 0, top_p <= 0, repetition_penalty <= 0 (the defaults). Otherwise
temperature 0 = greedy (argmax) and > 0 = sample with that temperature; top_k 0 = no top-k
filter; top_p 1.0 = no nucleus filter; repetition_penalty 1.0 = no penalty.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.parameter import Parameter

from ..vlm import GenerationOptions
from ..vlm.constrain import ConstraintError, grammar_for
from ..vlm.prompt import DEFAULT_PROMPT
from ..vlm.runtime import BACKENDS
from ..vlm.runtime.npu_choice import NPU_PROVIDERS
from ..vlm.vision import RESIZE_MODES

MODES = ('describe', 'detect')
STRING_ARRAY = ()   # default of a string-array parameter: declared by type, () when unset
TRANSPORTS = ('raw', 'compressed')
RELIABILITIES = ('best_effort', 'reliable')


@dataclass(frozen=True)
class Spec:
    """One parameter: name, default (its type is the parameter's type) and constraints."""

    name: str
    default: object
    description: str
    read_only: bool = False
    range: tuple | None = None      # (low, high), inclusive, for int and float parameters
    choices: tuple | None = None    # allowed values of a string parameter

    def descriptor(self) -> ParameterDescriptor:
        """Return the ParameterDescriptor this parameter is declared with."""
        d = ParameterDescriptor(description=self.description, read_only=self.read_only)
        if self.choices:
            d.additional_constraints = 'one of: ' + ', '.join(self.choices)
        if self.range is not None:
            lo, hi = self.range
            if isinstance(self.default, float):
                d.floating_point_range = [FloatingPointRange(
                    from_value=float(lo), to_value=float(hi), step=0.0)]
            else:
                d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
        return d

    def check(self, value) -> str | None:
        """Return why ``value`` is not allowed, or None."""
        if self.choices and value not in self.choices:
            return f'{self.name} must be one of {", ".join(self.choices)}, got {value!r}'
        if self.range is not None:
            lo, hi = self.range
            if not lo <= value <= hi:
                return f'{self.name} must be in [{lo}, {hi}], got {value!r}'
        if self.name == 'prompt' and not str(value).strip():
            return 'prompt must not be empty'
        if self.name == 'bit_depth' and 0 < value < 8:
            return 'bit_depth must be 0 (auto) or 8..16'
        if self.name == 'cameras':
            return check_cameras(value)
        if self.name == 'video_frames' and value == 1:
            return 'video_frames must be 0 (image mode) or at least 2 (frames of one video)'
        if self.name in ('choices', 'json_schema', 'regex'):
            try:
                grammar_for(**{self.name: value})
            except ConstraintError as e:
                return str(e)
        return None


SPECS = (
    Spec('cameras', STRING_ARRAY,
         'Cameras served by this one node (one model, one worker): for each name <c> the '
         'subscription <c>/image (or <c>/image/compressed), the outputs ~/<c>/description, '
         '~/<c>/description/stamped, ~/<c>/detections, ~/<c>/annotated_image and its own '
         '<c>.period_s, <c>.prompt, ... (unset = the node-wide value); requests name the camera. '
         'Unset = one camera with the names image, ~/description, ...', read_only=True),
    Spec('model_dir', '',
         'Model directory: AXERA axmodel demo / released layout, or ONNX stand-ins written by '
         'qwen-vl-export. Required.', read_only=True),
    Spec('tokenizer_dir', '',
         'Tokenizer directory when it is not inside model_dir (released layout); empty = find '
         'it in model_dir.', read_only=True),
    Spec('backend', 'auto',
         'Inference runtime: auto (axengine when it imports and the models are .axmodel, else '
         'onnxruntime), axengine (AX650N NPU) or onnxruntime (ONNX stand-ins on the CPU).',
         read_only=True, choices=BACKENDS),
    Spec('npu_provider', 'auto',
         "axengine: pyaxengine's execution provider: auto (as pyaxengine picks: an M.2 card's "
         'AXCLRTExecutionProvider when /dev/axcl_host exists or libaxcl_rt is the only NPU '
         "runtime, else the board's AxEngineExecutionProvider), AxEngineExecutionProvider (the "
         'AX650N board) or AXCLRTExecutionProvider (an AX650N M.2 card on a host computer).',
         read_only=True, choices=NPU_PROVIDERS),
    Spec('npu_device', 0,
         'axengine on M.2 cards: index of the card that runs the model (0 = the first; a host '
         'may have several). Ignored by the board and by onnxruntime.',
         read_only=True, range=(0, 255)),
    Spec('threads', 0,
         'onnxruntime intra-op threads per session; 0 = onnxruntime default. Ignored by axengine.',
         read_only=True, range=(0, 256)),
    Spec('system_prompt', '',
         "System prompt of the chat template; empty = the template's default.", read_only=True),
    Spec('resize', 'stretch',
         'How frames are fitted to the vision model input: stretch (ignore the aspect ratio), '
         'letterbox (keep it, pad) or crop (keep it, cut the centre).',
         read_only=True, choices=RESIZE_MODES),
    Spec('prompt', DEFAULT_PROMPT,
         'Default prompt: used by the timer and by ~/describe requests with an empty prompt. '
         'Changeable at run time.'),
    Spec('period_s', 0.0,
         'Timer mode: describe the newest frame every period_s seconds with the default prompt; '
         '0 = off (service only). A tick while busy or without a fresh frame is skipped. '
         'Changeable at run time.', range=(0.0, 86400.0)),
    Spec('video_frames', 0,
         'Video mode: 0 = image mode (describe the newest frame); N >= 2 = the timer and '
         '~/describe requests without an image describe the last N frames kept (at least '
         'video_interval_s apart) as one video; until N are kept, ticks are skipped and '
         "requests refused. Each pair of frames adds one image's vision tokens to the prompt, "
         "which must fit the model's prefill. A request image is always described as an "
         'image. Changeable at run time.', range=(0, 32)),
    Spec('video_interval_s', 0.5,
         'Video mode: minimum spacing in seconds, by header stamp, between the frames kept for '
         "a video; 0 = keep every frame. 0.5 = 2 frames per second, qwen-vl-utils' default "
         'video rate. Changeable at run time.', range=(0.0, 3600.0)),
    Spec('max_new_tokens', 128,
         'Upper bound on generated tokens per description (a request can set its own). '
         'Changeable at run time.', range=(1, 32768)),
    Spec('temperature', -1.0,
         'Sampling temperature: < 0 = the model\'s generation_config.json (its do_sample and '
         'temperature); 0 = greedy (argmax); > 0 = sample with this temperature.',
         range=(-1.0, 100.0)),
    Spec('top_k', -1,
         "Top-k filter when sampling: < 0 = the model's generation_config.json; 0 = off.",
         range=(-1, 1000000)),
    Spec('top_p', -1.0,
         "Nucleus (top-p) filter when sampling: <= 0 = the model's generation_config.json; "
         '1.0 = off.', range=(-1.0, 1.0)),
    Spec('repetition_penalty', -1.0,
         "Repetition penalty: <= 0 = the model's generation_config.json; 1.0 = none.",
         range=(-1.0, 100.0)),
    Spec('max_image_age_s', 5.0,
         'Refuse topic frames whose header stamp is older than this (node clock, so '
         'use_sim_time works for bags); 0 = no limit. A zero stamp counts from when the frame '
         'arrived. A request\'s own image is described whatever its stamp.',
         range=(0.0, 86400.0)),
    Spec('max_pixels', 3840 * 2160,
         'Refuse frames with more pixels than this (width x height) before converting them; '
         '0 = no limit.', range=(0, 1 << 31)),
    Spec('image_transport', 'raw',
         'raw: subscribe sensor_msgs/Image on "image"; compressed: subscribe '
         'sensor_msgs/CompressedImage on "image/compressed".',
         read_only=True, choices=TRANSPORTS),
    Spec('image_reliability', 'reliable',
         'QoS reliability of the image subscription (keep last 1): reliable (default) gets '
         'every frame of a reliable publisher (image_transport publishers, qwen-vl-replay); '
         'best_effort also matches sensor-data (best_effort) publishers, but on loopback Fast '
         'DDS loses most raw frames of 640x480 and up that way (README, "What reaches the '
         'node"). Lost frames are counted (frames_lost) and warned about.',
         read_only=True, choices=RELIABILITIES),
    Spec('queue_size', 2,
         'Requests that may wait for the inference worker; when full, ~/describe answers '
         'at once with success=false "busy".', read_only=True, range=(1, 64)),
    Spec('request_timeout_s', 300.0,
         'Longest a ~/describe call waits for its answer (queue wait included) before it '
         'answers success=false "timeout".', range=(1.0, 86400.0)),
    Spec('hang_timeout_s', 30.0,
         'A request whose runtime call shows no progress for this long (no decode step, or a '
         'vision / prefill run that does not return) means the runtime is hung: waiting '
         'requests are answered with that reason, new ones refused, /diagnostics goes ERROR. '
         '0 = no hang detection. Changeable at run time.', range=(0.0, 86400.0)),
    Spec('hang_exit_s', 10.0,
         'After a hang, exit the process (code 3) this many seconds later so that its '
         'supervisor restarts it (launch argument respawn:=true); 0 = stay up, refusing '
         'requests. Changeable at run time.', range=(0.0, 86400.0)),
    Spec('bit_depth', 0,
         'Bits a 16-bit image (mono16, bayer_*16, rgb16, ..., 16-bit PNG) really holds: a value '
         'v becomes min(255, v >> (bit_depth - 8)); 12 for a 12-bit sensor (0..4095), 16 = the '
         "high byte; 0 = auto: the bit length of each frame's brightest value (at least 8). "
         'Changeable at run time.', range=(0, 16)),
    # Typed answers and detections (README "Typed answers", "Detections"). String arrays are
    # declared with their type only (an empty list has no type in ROS parameters).
    Spec('mode', 'describe',
         'What the timer does: describe (a description on ~/description) or detect (boxes '
         'of "labels" on ~/detections, needs vision_msgs). Changeable at run time.',
         choices=MODES),
    Spec('labels', STRING_ARRAY,
         'mode detect: the object names the timer looks for, e.g. [person, cup]. Changeable '
         'at run time.'),
    Spec('choices', STRING_ARRAY,
         'Typed answers: the timer\'s (and ~/describe requests\' without their own) answer is '
         'exactly one of these strings, e.g. [yes, no]; empty = free text. Changeable at run '
         'time.'),
    Spec('json_schema', '',
         'Typed answers: the answer is JSON valid against this JSON Schema (its text); '
         'empty = none. Changeable at run time.'),
    Spec('regex', '',
         'Typed answers: the answer fully matches this regular expression (Rust regex '
         'syntax); empty = none. Changeable at run time.'),
    Spec('vision_cache_frames', 2,
         'Follow-up questions about the same frame: vision features of this many of the newest '
         'frames described are kept (a video counts as one; a topic frame is known by topic, '
         'stamp and frame_id, a request image by its bytes); 0 = none. On chunked-prefill '
         'builds the KV rows of the common prompt prefix are reused too. Answers are '
         'token-identical to a fresh run.', read_only=True, range=(0, 64)),
)

SPEC_BY_NAME = {s.name: s for s in SPECS}

# What one camera of ``cameras`` may set for itself, as <camera>.<name>; unset = the node-wide
# parameter of that name (at run time too: a camera follows the node-wide prompt until its own
# is set).
PER_CAMERA = ('image_transport', 'image_reliability', 'period_s', 'prompt', 'mode', 'labels',
              'choices', 'json_schema', 'regex')
# A camera name is one ROS name token: it becomes <name>/image and ~/<name>/description.
CAMERA_NAME = re.compile(r'[A-Za-z][A-Za-z0-9_]*\Z')
_TYPES = {str: Parameter.Type.STRING, float: Parameter.Type.DOUBLE, int: Parameter.Type.INTEGER,
          tuple: Parameter.Type.STRING_ARRAY}


class _SettingsMethods:
    """What a Settings snapshot can do besides holding the values (Settings: below)."""

    def replace(self, **changes):
        """Return a copy with some values changed."""
        return dataclasses.replace(self, **changes)

    def changed(self, changes: dict):
        """Return a copy with ``changes`` (check_changes' names) applied, per-camera ones too."""
        plain = {k: v for k, v in changes.items() if '.' not in k}
        per_camera = {cam: dict(values) for cam, values in self.per_camera.items()}
        for name, value in changes.items():
            if '.' in name:
                cam, key = name.split('.', 1)
                per_camera.setdefault(cam, {})[key] = value
        return self.replace(**plain, per_camera=per_camera)

    def camera(self, name: str):
        """Return the settings one camera works with: its own values over the node-wide ones."""
        return self.replace(**self.per_camera.get(name, {}))

    @property
    def camera_names(self) -> tuple:
        """The cameras, in order; ('',) = one unnamed camera (every name as without cameras)."""
        return self.cameras or ('',)

    def generation_options(self, max_new_tokens: int = 0) -> GenerationOptions:
        """GenerationOptions of these settings; sentinels become None (= generation_config)."""
        t = self.temperature
        return GenerationOptions(
            max_new_tokens=int(max_new_tokens or self.max_new_tokens),
            greedy=None if t < 0 else t == 0,
            temperature=t if t > 0 else None,
            top_k=self.top_k if self.top_k >= 0 else None,
            top_p=self.top_p if self.top_p > 0 else None,
            repetition_penalty=(self.repetition_penalty if self.repetition_penalty > 0
                                else None),
            choices=self.choices or None, json_schema=self.json_schema or None,
            regex=self.regex or None)


# A snapshot of the parameter values: one attribute per row of SPECS (built from the table, so
# a new parameter is one Spec), plus ``per_camera`` {camera: {name: value}} of the values a
# camera set for itself.
Settings = dataclasses.make_dataclass(
    'Settings',
    [(s.name, type(s.default), dataclasses.field(default=s.default)) for s in SPECS]
    + [('per_camera', dict, dataclasses.field(default_factory=dict))],
    bases=(_SettingsMethods,), frozen=True)
Settings.__module__ = __name__


def declare(node) -> Settings:
    """Declare every parameter on ``node``; return the values (ValueError if one is bad).

    Per camera of ``cameras``: <camera>.<name> for each of PER_CAMERA, declared by type only
    (unset = the node-wide value).
    """
    values = {}
    for spec in SPECS:
        if isinstance(spec.default, tuple):
            value = node.declare_parameter(spec.name, Parameter.Type.STRING_ARRAY,
                                           spec.descriptor()).value
            values[spec.name] = strings(value)
            continue
        values[spec.name] = node.declare_parameter(spec.name, spec.default,
                                                   spec.descriptor()).value
    problems = [p for p in (SPEC_BY_NAME[k].check(v) for k, v in values.items()) if p]
    if not values['model_dir']:
        problems.append('model_dir is not set (give -p model_dir:=DIR or a params file)')
    per_camera: dict = {}
    for cam in values['cameras'] if not check_cameras(values['cameras']) else ():
        for key in PER_CAMERA:
            spec = SPEC_BY_NAME[key]
            d = spec.descriptor()
            d.description = (f'camera {cam}: {key} of this camera; unset = the node-wide '
                             f'{key}. ' + spec.description)
            value = node.declare_parameter(f'{cam}.{key}', _TYPES[type(spec.default)], d).value
            if value is None:
                continue
            value = strings(value) if isinstance(spec.default, tuple) else value
            problem = spec.check(value)
            if problem:
                problems.append(f'{cam}.{problem}')
            per_camera.setdefault(cam, {})[key] = value
    if problems:
        raise ValueError('; '.join(problems))
    return Settings(**values, per_camera=per_camera)


def check_changes(params) -> tuple[dict, str | None]:
    """Validate rclpy Parameters being set: return ({name: value}, None) or ({}, reason).

    A per-camera name (front.prompt) is checked as its node-wide parameter is.
    """
    changes = {}
    for p in params:
        cam, _, key = p.name.rpartition('.')
        spec = SPEC_BY_NAME.get(key) if (not cam or key in PER_CAMERA) else None
        if spec is None:
            continue  # e.g. use_sim_time: rclpy handles it
        value = strings(p.value) if isinstance(spec.default, tuple) else p.value
        problem = spec.check(value)
        if problem:
            return {}, f'{cam}.{problem}' if cam else problem
        changes[p.name] = value
    return changes, None


def check_cameras(names) -> str | None:
    """Return why the parameter ``cameras`` is not allowed, or None."""
    for name in names:
        if not CAMERA_NAME.match(name):
            return (f'cameras: {name!r} is not a camera name (a letter, then letters, digits '
                    'or _: it becomes <name>/image and ~/<name>/description)')
    if len(set(names)) != len(names):
        return f'cameras: a name is given twice: {", ".join(names)}'
    return None


def strings(value) -> tuple:
    """Return a string-array parameter's value as a tuple without blank entries (None: ()).

    [''] is how a string array is emptied from the command line (``[]`` has no type).
    """
    return tuple(str(v) for v in (value or ()) if str(v).strip())
