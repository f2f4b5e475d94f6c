"""The non-ONNX files of a stand-in model directory: embeddings, configs, tokenizer."""
import json
import shutil
from pathlib import Path

import ml_dtypes
import numpy as np

NPY_EMBEDDINGS = 'model.embed_tokens.weight.npy'
BF16_EMBEDDINGS = 'model.embed_tokens.weight.bfloat16.bin'
EMBEDDING_KINDS = ('npy', 'bf16')

CONFIG_FILES = ('config.json', 'generation_config.json', 'preprocessor_config.json')
TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json',
                   'added_tokens.json', 'vocab.json', 'merges.txt', 'chat_template.jinja')
CHAT_TEMPLATE = 'chat_template.json'


def write_embeddings(table: np.ndarray, out_dir: Path, kind: str) -> Path:
    """Write the (V, D) table as float32 .npy (demo layout) or raw bf16 rows (released layout)."""
    if kind == 'npy':
        path = out_dir / NPY_EMBEDDINGS
        np.save(path, table.astype(np.float32))
    elif kind == 'bf16':
        path = out_dir / BF16_EMBEDDINGS
        np.ascontiguousarray(table.astype(ml_dtypes.bfloat16)).tofile(path)
    else:
        raise ValueError(f'unknown embeddings kind {kind!r} (npy or bf16)')
    return path


def copy_hf_files(hf_dir: Path, out_dir: Path) -> list[str]:
    """Copy the configs and tokenizer files of `hf_dir`; write chat_template.json if missing."""
    missing = [name for name in CONFIG_FILES if not (hf_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f'{hf_dir} lacks {", ".join(missing)}')
    copied = []
    for name in CONFIG_FILES + TOKENIZER_FILES + (CHAT_TEMPLATE,):
        if (hf_dir / name).is_file():
            shutil.copyfile(hf_dir / name, out_dir / name)
            copied.append(name)
    if CHAT_TEMPLATE not in copied:
        template = _tokenizer_chat_template(hf_dir)
        text = json.dumps({'chat_template': template}, indent=2) + '\n'
        (out_dir / CHAT_TEMPLATE).write_text(text)
        copied.append(CHAT_TEMPLATE)
    return copied


def _tokenizer_chat_template(hf_dir: Path) -> str:
    """Return the checkpoint's multimodal chat template (chat_template.jinja, tokenizer_config).

    Read with the pipeline's own loader, so that a checkpoint saved by another transformers
    major (5.x: TokenizersBackend, extra_special_tokens as a list) exports too, and the
    template is the one that renders images, not the tokenizer's text-only one.
    """
    from ..vlm.errors import ModelDirError
    from ..vlm.prompt import load_tokenizer

    try:
        return load_tokenizer(str(hf_dir)).chat_template
    except ModelDirError as e:
        raise FileNotFoundError(f'{hf_dir} has no {CHAT_TEMPLATE} and no usable chat '
                                f'template: {e}') from e
