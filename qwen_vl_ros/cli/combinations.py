"""Which qwen-vl-describe options go together: none is ever ignored silently.

qwen-vl-describe runs one of three ways: describe image files (``--image``, or text only),
find objects (``--detect`` / ``--refer``), or annotate a recording (``--bag``). An option that
the chosen way would not use is refused with one line and exit code 2 (describe.main), rather
than dropped: a script that passes ``--stream`` or ``--follow-up`` to ``--bag`` must learn
that they do nothing there.
"""

from __future__ import annotations

# option -> why it has no effect, per way of running (the README says the same)
_WHY = {
    '--bag': {
        '--stream': 'a recording is annotated one JSON line per frame, written when the '
                    'frame is described (each frame\'s text is also printed on stderr)',
        '--follow-up': 'a recording is annotated with the one --prompt per frame',
        '--detect': 'object detection takes one --image',
        '--refer': 'object detection takes one --image',
    },
    'detect': {
        '--stream': 'detections are printed as one JSON object once the boxes are complete',
        '--prompt': 'detection asks its own question: give what to find with --detect LABELS '
                    'and/or --refer EXPRESSION',
        '--follow-up': 'detections answer one question about the one --image',
        '--choices': 'detections have their own answer format (boxes as JSON)',
        '--json-schema': 'detections have their own answer format (boxes as JSON)',
        '--regex': 'detections have their own answer format (boxes as JSON)',
    },
}
_BAG_ONLY = ('--topic', '--every', '--out')


class UsageError(ValueError):
    """Options that do not go together (one line; qwen-vl-describe exits with code 2)."""


def check_combinations(args) -> None:
    """Raise UsageError for the first given option that the chosen way of running ignores.

    ``args``: describe.build_parser()'s namespace. ``--image`` with ``--bag`` is refused by
    annotate_bag itself.
    """
    from ..vlm.prompt import DEFAULT_PROMPT
    given = {
        '--prompt': args.prompt != DEFAULT_PROMPT, '--stream': args.stream,
        '--follow-up': bool(args.follow_up),
        '--detect': args.detect is not None, '--refer': bool(args.refer),
        '--choices': args.choices is not None, '--json-schema': args.json_schema is not None,
        '--regex': args.regex is not None, '--topic': args.topic is not None,
        '--every': args.every is not None, '--out': args.out is not None,
    }
    if args.bag:
        way, why = '--bag', _WHY['--bag']
    elif given['--detect'] or given['--refer']:
        way = '--detect' if given['--detect'] else '--refer'
        why = dict(_WHY['detect'], **{o: 'it is for --bag only' for o in _BAG_ONLY})
    else:
        way = '--image' if args.image else 'a question without --image or --bag'
        why = {o: 'it is for --bag only' for o in _BAG_ONLY}
    for option, reason in why.items():
        if given[option]:
            raise UsageError(f'{option} cannot be used with {way}: {reason}')
