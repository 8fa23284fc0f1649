"""Small random Janus checkpoints in transformers' format, built and saved in tmp dirs (nothing downloaded).

`build_janus(directory, **sizes)` writes what `JanusForConditionalGeneration.save_pretrained`
and `JanusProcessor.save_pretrained` write for a Janus-Pro checkpoint: config.json,
model.safetensors, generation_config.json, tokenizer and processor files (the
default system prompt, the image normalisation, and a chat template in Janus-Pro's
format: unimm's own, whose output test_janus.py checks against that format written out).
"""
from __future__ import annotations

from pathlib import Path

import torch

BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
IMAGE, BOI, EOI = "<image_placeholder>", "<begin_of_image>", "<end_of_image>"

CORPUS = [
    "You are a helpful language and vision assistant.",
    "<|User|>: What is in the picture?\n\n<|Assistant|>: A red circle above a blue square.",
    "<|User|>: Describe the scene.\n\n<|Assistant|>: Two green triangles on the left.",
    "a red circle above a blue square", "What colour is the circle? It is red.",
    "Compare them. And on the right? natural language, visual content, tasks.",
]

# Three small shapes: (vision px, patch), VQ levels, Llama heads / kv heads, tying, activations, depths.
CONFIGS = {
    "mha-tied-32px": dict(image_size=32, patch_size=8, channel_multiplier=(1, 2), heads=4, kv_heads=4,
                          hidden=64, tied=True, vision_act="gelu", vq_act="gelu", depth=2, gen_depth=2),
    "gqa-untied-48px": dict(image_size=48, patch_size=16, channel_multiplier=(1, 1, 2), heads=4, kv_heads=2,
                            hidden=64, tied=False, vision_act="gelu_pytorch_tanh", vq_act="gelu", depth=1,
                            gen_depth=3, num_res_blocks=2),
    "mqa-tied-64px": dict(image_size=64, patch_size=8, channel_multiplier=(1, 2, 2), heads=6, kv_heads=1,
                          hidden=96, tied=True, vision_act="gelu", vq_act="gelu_pytorch_tanh", depth=3, gen_depth=1),
}


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=[BOS, EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    tok.add_special_tokens([IMAGE, BOI, EOI])
    # Janus-Pro's Llama tokenizer puts BOS in front of every text.
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                       special_tokens=[(BOS, tok.token_to_id(BOS))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   extra_special_tokens={"image_token": IMAGE, "boi_token": BOI, "eoi_token": EOI},
                                   clean_up_tokenization_spaces=False)


def janus_config(tokenizer, image_size=32, patch_size=8, channel_multiplier=(1, 2), heads=4, kv_heads=4, hidden=64,
                 tied=True, vision_act="gelu", vq_act="gelu", depth=2, gen_depth=2, num_res_blocks=1, codebook=64):
    from transformers import JanusConfig, LlamaConfig
    from transformers.models.janus.configuration_janus import JanusVisionConfig, JanusVQVAEConfig

    grid = image_size // patch_size
    text = LlamaConfig(vocab_size=512, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                       num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=512,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=tied)
    vision = JanusVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2.0,
                               image_size=image_size, patch_size=patch_size, hidden_act=vision_act,
                               projection_dim=hidden, depth=depth, num_image_tokens=grid * grid)
    vq = JanusVQVAEConfig(embed_dim=8, num_embeddings=codebook, base_channels=32, latent_channels=32,
                          channel_multiplier=list(channel_multiplier), num_res_blocks=num_res_blocks,
                          projection_dim=hidden, image_token_embed_dim=hidden, num_hidden_layers=gen_depth,
                          hidden_act=vq_act)
    return JanusConfig(text_config=text, vision_config=vision, vq_config=vq,
                       image_token_id=tokenizer.convert_tokens_to_ids(IMAGE), tie_word_embeddings=tied)


def build_janus(directory, seed: int = 0, **sizes):
    """Save a random Janus model + processor under `directory`; returns (model, processor)."""
    from transformers import GenerationConfig, JanusForConditionalGeneration
    from transformers.models.janus.image_processing_pil_janus import JanusImageProcessorPil
    from transformers.models.janus.processing_janus import JanusProcessor

    from unimm.interop.janus.prompts import janus_chat_template

    tok = build_tokenizer()
    config = janus_config(tok, **sizes)
    torch.manual_seed(seed)
    model = JanusForConditionalGeneration(config).eval()
    with torch.no_grad():
        # Weights at 1/sqrt(fan-in) rather than Janus's 0.02, so greedy decoding gives varied
        # ids (not one id repeated); random norms and biases, so a mapping mistake cannot hide
        # behind ones and zeros.
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, p[0].numel() ** -0.5)
            else:
                p.add_(torch.randn_like(p) * 0.1)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        guidance_scale=5.0, temperature=1.0, generation_kwargs={"boi_token_id": tok.convert_tokens_to_ids(BOI)})
    model.save_pretrained(directory)
    vc = config.vision_config
    processor = JanusProcessor(
        image_processor=JanusImageProcessorPil(size={"height": vc.image_size, "width": vc.image_size},
                                               image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]),
        tokenizer=tok, chat_template=janus_chat_template(EOS), use_default_system_prompt=True,
        num_image_tokens=vc.num_image_tokens)
    processor.save_pretrained(directory)
    return model, processor
