"""The node's parameter table, its YAML documentation and the sampling sentinels (no ROS graph)."""

from pathlib import Path

import pytest
import yaml

pytest.importorskip('rcl_interfaces')

from qwen_vl_ros.ros.params import SPEC_BY_NAME, SPECS, Settings  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / 'config' / 'describe.yaml'
CONTRACT = {'model_dir', 'tokenizer_dir', 'backend', 'prompt', 'system_prompt', 'period_s',
            'max_new_tokens', 'temperature', 'top_k', 'top_p', 'repetition_penalty',
            'max_image_age_s', 'max_pixels', 'image_transport', 'image_reliability',
            'queue_size', 'resize'}
RUN_TIME = {'prompt', 'period_s', 'max_new_tokens', 'temperature', 'top_k', 'top_p',
            'repetition_penalty'}


def settings(**changes) -> Settings:
    return Settings(**{s.name: s.default for s in SPECS}).replace(**changes)


def test_every_contract_parameter_is_declared_with_description_and_range():
    assert CONTRACT <= set(SPEC_BY_NAME)
    for spec in SPECS:
        d = spec.descriptor()
        assert len(d.description) > 20, spec.name
        if isinstance(spec.default, (int, float)) and not isinstance(spec.default, bool):
            ranges = d.floating_point_range if isinstance(spec.default, float) \
                else d.integer_range
            assert len(ranges) == 1, spec.name
            assert ranges[0].from_value <= spec.default <= ranges[0].to_value
        if spec.choices:
            assert spec.default in spec.choices
            assert d.additional_constraints.startswith('one of')
    assert not any(SPEC_BY_NAME[n].read_only for n in RUN_TIME)
    for name in ('model_dir', 'tokenizer_dir', 'backend', 'system_prompt', 'resize',
                 'image_transport', 'image_reliability', 'queue_size', 'threads'):
        assert SPEC_BY_NAME[name].read_only, name


def test_yaml_documents_every_parameter_with_its_default():
    doc = yaml.safe_load(CONFIG.read_text())
    values = doc['/**']['ros__parameters']
    # string arrays are unset by default: documented by a commented example line
    arrays = {n for n, s in SPEC_BY_NAME.items() if isinstance(s.default, tuple)}
    assert set(values) == set(SPEC_BY_NAME) - arrays
    for name in arrays:
        assert f'    # {name}: [' in CONFIG.read_text(), name
    for name, value in values.items():
        default = SPEC_BY_NAME[name].default
        assert value == default and type(value) is type(default), name
    lines = CONFIG.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip().split(':')[0] in values and line.startswith('    ') \
                and not line.strip().startswith('#'):
            assert lines[i - 1].strip().startswith('#'), f'{line.strip()} has no comment'


@pytest.mark.parametrize('name,value,ok', [
    ('backend', 'axengine', True), ('backend', 'tensorrt', False),
    ('resize', 'letterbox', True), ('resize', 'zoom', False),
    ('image_transport', 'compressed', True), ('image_transport', 'theora', False),
    ('image_reliability', 'reliable', True), ('image_reliability', 'best-effort', False),
    ('period_s', 0.0, True), ('period_s', -0.5, False),
    ('top_p', 1.0, True), ('top_p', 1.5, False),
    ('queue_size', 0, False), ('prompt', ' ', False), ('prompt', 'Is the door open?', True),
    ('mode', 'detect', True), ('mode', 'segment', False),
    ('choices', ('yes', 'no'), True), ('choices', ('yes', 'yes'), False), ('choices', (), True),
    ('json_schema', '{"type": "integer"}', True), ('json_schema', '{"type": "strin"}', False),
    ('json_schema', '{oops', False), ('json_schema', '', True),
    ('regex', '[0-9]+', True), ('regex', '[0-', False),
])
def test_checks(name, value, ok):
    assert (SPEC_BY_NAME[name].check(value) is None) == ok


def test_sampling_sentinels_mean_generation_config():
    o = settings().generation_options()
    assert (o.greedy, o.temperature, o.top_k, o.top_p, o.repetition_penalty) == \
        (None, None, None, None, None)
    assert o.max_new_tokens == 128
    o = settings(temperature=0.0).generation_options()
    assert o.greedy is True and o.temperature is None
    o = settings(temperature=0.7, top_k=0, top_p=0.9, repetition_penalty=1.05) \
        .generation_options(max_new_tokens=7)
    assert (o.greedy, o.temperature, o.top_k, o.top_p, o.repetition_penalty) == \
        (False, 0.7, 0, 0.9, 1.05)
    assert o.max_new_tokens == 7
    o = settings(top_p=0.0, repetition_penalty=0.0).generation_options()
    assert o.top_p is None and o.repetition_penalty is None
