"""Run qwen-vl-describe in this process and record its memory at exit (used by bench 3).

    python bench/_rss_probe.py OUT.json {mmap,whole} -- <qwen-vl-describe arguments>

mmap: the pipeline as shipped (the embedding table memory-mapped). whole: the table read into
memory first, as AXERA's demo does (np.load of the float32 .npy; the raw bf16 .bin read whole).
At exit OUT.json gets VmHWM (peak resident set), VmRSS, and the most resident bytes the table
file's mappings had after any lookup (from /proc/self/smaps).
"""

import atexit
import json
import os
import sys

import ml_dtypes
import numpy as np


def table_rss(path: str) -> int:
    """Resident bytes of every mapping of ``path`` in this process."""
    real, total, inside = os.path.realpath(path), 0, False
    with open('/proc/self/smaps') as f:
        for line in f:
            head = line.split()
            if head and '-' in head[0] and len(head) >= 5 and ':' in head[3]:
                inside = len(head) >= 6 and os.path.realpath(head[5]) == real
            elif inside and line.startswith('Rss:'):
                total += int(head[1]) * 1024
    return total


def status() -> dict:
    """VmHWM and VmRSS in bytes."""
    out = {}
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(('VmHWM', 'VmRSS')):
                out[line.split(':')[0]] = int(line.split()[1]) * 1024
    return out


def main() -> int:
    """Patch the table loader if asked, run the CLI, dump the figures at exit."""
    out_path, mode = sys.argv[1], sys.argv[2]
    argv = sys.argv[sys.argv.index('--') + 1:]
    from qwen_vl_ros.cli import describe
    from qwen_vl_ros.vlm import pipeline
    from qwen_vl_ros.vlm.embeddings import EmbeddingTable
    seen = {}

    class Table(EmbeddingTable):
        def __init__(self, path, vocab, hidden):
            super().__init__(path, vocab, hidden)
            seen['path'] = path
            if mode == 'whole':
                if path.endswith('.npy'):
                    self.table = np.load(path)
                else:
                    self.table = np.fromfile(path, ml_dtypes.bfloat16).reshape(vocab, hidden)
            seen['whole_bytes'] = self.table.nbytes if mode == 'whole' else 0
            seen['mapped_rss'] = 0

        def lookup(self, ids, dtype):
            rows = super().lookup(ids, dtype)
            # the mapping's resident pages while the table is in use (largest seen)
            seen['mapped_rss'] = max(seen['mapped_rss'], table_rss(self.path))
            return rows

    pipeline.EmbeddingTable = Table

    def dump():
        figures = dict(status(), mode=mode, table=seen.get('path'),
                       table_mapped_rss=seen.get('mapped_rss'),
                       table_in_memory=seen.get('whole_bytes', 0))
        with open(out_path, 'w') as f:
            json.dump(figures, f)

    atexit.register(dump)
    return describe.main(argv)


if __name__ == '__main__':
    sys.exit(main())
