"""The loading part of AXERA's python/infer.py, on the stand-ins with onnxruntime (bench 5).

    python bench/_demo_load.py MODEL_DIR

Prints one line per stage as it finishes; the last is "model load done". What the demo does
before its first token: transformers' config, tokenizer and image processor, the vision
session, one session per decoder layer (here one per shape group: onnxruntime has no groups),
the post session, and np.load of the whole float32 embedding table.
"""

import glob
import os
import sys
import time


def main() -> int:
    """Load like the demo, saying when each stage is done."""
    model_dir = sys.argv[1]

    def say(stage):
        print(f'{time.perf_counter():.6f} {stage}', file=sys.stderr, flush=True)

    import numpy as np
    import onnxruntime as ort
    from transformers import AutoConfig, AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    say('imports')
    cfg = AutoConfig.from_pretrained(model_dir)
    AutoTokenizer.from_pretrained(model_dir)
    Qwen2VLImageProcessor.from_pretrained(model_dir)
    say('config, tokenizer, processor')
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3

    def session(path):
        return ort.InferenceSession(path, sess_options=opts, providers=['CPUExecutionProvider'])

    vision = session(glob.glob(os.path.join(model_dir, '*vision*.onnx'))[0])
    say('vision')
    text = getattr(cfg, 'text_config', cfg)
    layers = [[session(p) for p in sorted(glob.glob(os.path.join(
        model_dir, f'qwen2_5_vl_p*_l{i}_together_g*.onnx')))]
        for i in range(text.num_hidden_layers)]
    say('layers')
    post = session(os.path.join(model_dir, 'qwen2_5_vl_post.onnx'))
    embeds = np.load(os.path.join(model_dir, 'model.embed_tokens.weight.npy'))
    say('post, embeddings (np.load)')
    del vision, layers, post, embeds
    say('model load done')
    return 0


if __name__ == '__main__':
    sys.exit(main())
