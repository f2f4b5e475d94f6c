"""The steps of `make fullsize` (bench/fullsize.py runs each in its own process, for its RSS).

    checkpoint  a random-weight Qwen2.5-VL-3B checkpoint from the real config.json, saved in bf16
                by the installed transformers (the export venv's: 5.x)
    reference   transformers' own greedy generation on it (float32 or bf16): tokens, top-2
                logit gaps, vision / first-token / decode timings. Run with the test venv's
                transformers 4.57 (its image processor needs no torchvision; 5.x's does) and
                lm_head tied as config.json says
    pipeline    our pipeline on an exported directory: the same generation, timings, and
                teacher-forced logits over the quality cases (or a comparison with another
                export's logits: --teacher)
Each step prints one JSON object on its last stdout line.
"""
import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# The quality cases: fixed images (the demo's, and a synthetic one) and prompts.
PROMPTS = ('Describe this image.', 'What objects are on the left side? Answer in one sentence.')
TOKENIZER_FILES = ('vocab.json', 'merges.txt', 'tokenizer_config.json', 'chat_template.json')
HF_FILES = ('generation_config.json', 'preprocessor_config.json')


def images(seed_dir: Path | None) -> list[tuple[str, np.ndarray]]:
    """(name, 448x448 RGB uint8) of the quality set: the demo's images when present, else drawn."""
    import cv2
    found = []
    for name in ('demo.jpg', 'demo1.jpg'):
        path = seed_dir / name if seed_dir else None
        if path is not None and path.is_file():
            bgr = cv2.imread(str(path))
            found.append((name, cv2.resize(bgr, (448, 448))[:, :, ::-1].copy()))
    if len(found) < 2:  # a user's clone without ../shared: a fixed synthetic scene
        rng = np.random.default_rng(7)
        img = np.zeros((448, 448, 3), np.uint8)
        for _ in range(12):
            x, y = rng.integers(0, 400, 2)
            img[y:y + 48, x:x + 48] = rng.integers(0, 256, 3)
        found.append(('synthetic', img))
    return found


def step_checkpoint(args) -> dict:
    """Write a bf16 random-weight checkpoint of the config in --config-dir to --out."""
    import torch
    import transformers
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    out = Path(args.out)
    cfg = Qwen2_5_VLConfig.from_pretrained(args.config_dir)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    kw = 'dtype' if int(transformers.__version__.split('.')[0]) >= 5 else 'torch_dtype'
    # HF's own init (std = initializer_range) in bf16, then biases and norm gains redrawn:
    # HF zeroes the first and sets the second to 1, which would hide bugs there.
    model = Qwen2_5_VLForConditionalGeneration._from_config(cfg, **{kw: torch.bfloat16})
    gen = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1:
                noise = torch.randn(param.shape, generator=gen)
                gain = name.endswith('.weight')  # 1-D weights are RMSNorm / LayerNorm gains
                param.copy_((1.0 + 0.1 * noise) if gain else 0.02 * noise)
    model.save_pretrained(out, max_shard_size='2GB')
    for name in TOKENIZER_FILES:
        src = Path(args.tokenizer_dir) / name
        if src.is_file():
            shutil.copyfile(src, out / name)
    for name in HF_FILES:
        shutil.copyfile(Path(args.config_dir) / name, out / name)
    params = sum(p.numel() for p in model.parameters())
    return {'params': params, 'seconds': time.perf_counter() - start,
            'transformers': transformers.__version__,
            'bytes': sum(f.stat().st_size for f in out.glob('*.safetensors'))}


def step_reference(args) -> dict:
    """Run transformers' greedy generation: tokens, per-step top-2 gaps, timings."""
    import torch
    import transformers
    from transformers import LogitsProcessor, LogitsProcessorList

    sys.path.insert(0, str(REPO / 'test'))
    from hf_processor import ImageOnlyProcessor, image_processor_class
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    torch.set_num_threads(args.threads or torch.get_num_threads())
    dtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16}[args.dtype]
    from qwen_vl_ros.export.checkpoint import ties_embeddings, tie_lm_head

    start = time.perf_counter()
    kw = 'dtype' if int(transformers.__version__.split('.')[0]) >= 5 else 'torch_dtype'
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        args.hf_dir, attn_implementation='eager', low_cpu_mem_usage=True, **{kw: dtype}).eval()
    # A checkpoint saved by transformers 5 under 4.x: tie as config.json says (issue 16)
    if ties_embeddings(json.loads((Path(args.hf_dir) / 'config.json').read_text())):
        tie_lm_head(model)
    load_s = time.perf_counter() - start
    tok = AutoTokenizer.from_pretrained(args.hf_dir)
    ip = image_processor_class().from_pretrained(args.hf_dir)
    ip.do_resize = False
    # The processor's template (chat_template.json), as transformers' Qwen2_5_VLProcessor reads
    # it: tokenizer_config.json holds Qwen2.5-VL's text-only one.
    template = json.loads((Path(args.hf_dir) / 'chat_template.json').read_text())['chat_template']
    proc = ImageOnlyProcessor(ip, tok, chat_template=template)
    name, frame = images(Path(args.seed_dir) if args.seed_dir else None)[0]
    content = [{'type': 'image'}, {'type': 'text', 'text': PROMPTS[0]}]
    text = proc.apply_chat_template([{'role': 'user', 'content': content}], tokenize=False,
                                    add_generation_prompt=True)
    feed = dict(proc(text=[text], images=[frame], return_tensors='pt'))
    feed.pop('token_type_ids', None)
    stamps = []

    class Clock(LogitsProcessor):
        def __call__(self, input_ids, scores):
            stamps.append(time.perf_counter())
            return scores

    with torch.no_grad():
        t0 = time.perf_counter()
        visual = getattr(model.model, 'visual', None) or model.visual
        visual(feed['pixel_values'].to(dtype), grid_thw=feed['image_grid_thw'])
        vision_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = model.generate(**feed, do_sample=False, max_new_tokens=args.n,
                             min_new_tokens=args.n, eos_token_id=None, repetition_penalty=1.0,
                             temperature=None, top_k=None, top_p=None, output_logits=True,
                             return_dict_in_generate=True,
                             logits_processor=LogitsProcessorList([Clock()]))
    ids = out.sequences[0, feed['input_ids'].shape[1]:].tolist()
    logits = torch.stack(out.logits)[:, 0].float().numpy()
    top = np.sort(logits, axis=-1)[:, -2:]
    decode = [b - a for a, b in zip(stamps, stamps[1:])]
    return {'dtype': args.dtype, 'transformers': transformers.__version__, 'image': name,
            'prompt_tokens': int(feed['input_ids'].shape[1]), 'tokens': ids,
            'top2_gaps': (top[:, 1] - top[:, 0]).tolist(), 'load_s': load_s,
            'vision_ms': 1e3 * vision_s, 'ttft_ms': 1e3 * (stamps[0] - t0),
            'decode_ms_per_token': 1e3 * float(np.mean(decode)) if decode else 0.0}


def step_pipeline(args) -> dict:
    """Our pipeline: load, one timed generation, teacher-forced logits of the quality cases."""
    from qwen_vl_ros.vlm import GenerationOptions, Pipeline

    start = time.perf_counter()
    pipe = Pipeline.load(args.model_dir, backend='onnxruntime', threads=args.threads,
                         progress=lambda m: print(m, file=sys.stderr, flush=True))
    load_s = time.perf_counter() - start
    cases = [(name, frame, prompt)
             for name, frame in images(Path(args.seed_dir) if args.seed_dir else None)
             for prompt in PROMPTS]
    opts = GenerationOptions(max_new_tokens=args.n, greedy=True, repetition_penalty=1.0)
    name, frame, prompt = cases[0]
    pipe.vision_cache.clear()
    result = pipe.describe([frame], prompt, opts)
    report = {'model_dir': args.model_dir, 'load_s': load_s, 'image': name,
              'prompt_tokens': result.prompt_tokens, 'tokens': list(result.token_ids),
              'text': result.text, 'vision_ms': result.timings_ms['vision'],
              'ttft_ms': result.timings_ms['time_to_first_token'],
              'decode_ms_per_token': (1e3 / result.tokens_per_second
                                      if result.tokens_per_second else 0.0)}
    if args.teacher:  # score the teacher's continuations, compare with its logits
        with np.load(args.teacher) as z:
            teacher = {k: z[k] for k in z.files}
        agree, cosines = [], []
        for i, (name, frame, prompt) in enumerate(cases):
            cont = teacher[f'tokens{i}']
            mine = pipe.score([frame], prompt, cont)
            theirs = teacher[f'logits{i}'].astype(np.float32)
            agree += (mine.argmax(-1) == theirs.argmax(-1)).tolist()
            cosines += (np.sum(mine * theirs, -1) / (np.linalg.norm(mine, axis=-1)
                                                     * np.linalg.norm(theirs, axis=-1))).tolist()
        report.update(quality_cases=len(cases), quality_positions=len(agree),
                      next_token_agreement=float(np.mean(agree)),
                      logit_cosine_mean=float(np.mean(cosines)),
                      logit_cosine_min=float(np.min(cosines)))
    if args.save_teacher:
        saved = {}
        for i, (name, frame, prompt) in enumerate(cases):
            cont = pipe.describe([frame], prompt, opts).token_ids
            saved[f'tokens{i}'] = np.asarray(cont, np.int64)
            saved[f'logits{i}'] = pipe.score([frame], prompt, cont).astype(np.float16)
        np.savez(args.save_teacher, **saved)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='step', required=True)
    p = sub.add_parser('checkpoint')
    p.add_argument('--config-dir', required=True)
    p.add_argument('--tokenizer-dir', required=True)
    p.add_argument('--out', required=True)
    p.add_argument('--seed', type=int, default=0)
    for name in ('reference', 'pipeline'):
        p = sub.add_parser(name)
        p.add_argument('--n', type=int, default=16)
        p.add_argument('--threads', type=int, default=0)
        p.add_argument('--seed-dir', default='')
        if name == 'reference':
            p.add_argument('--hf-dir', required=True)
            p.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32')
        else:
            p.add_argument('--model-dir', required=True)
            p.add_argument('--teacher', default='')
            p.add_argument('--save-teacher', default='')
    args = parser.parse_args(argv)
    report = {'checkpoint': step_checkpoint, 'reference': step_reference,
              'pipeline': step_pipeline}[args.step](args)
    print(json.dumps(report), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
