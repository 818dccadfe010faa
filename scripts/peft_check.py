"""Cross-check Tessera's LoRA files with Hugging Face `peft` (not in the
test command: it needs torch, several GB). Usage:

    python scripts/peft_check.py OUR_ADAPTER_DIR TESSERA_BINARY MODELS_DIR

1. `peft` loads the adapter `tessera adapt` wrote into a Llama of
   SmolLM2-135M's shape (random weights: only names, shapes, dtypes and
   config semantics are checked), reports no missing or unexpected LoRA
   tensors, and its merged delta `get_delta_weight` equals
   alpha / r · B · A computed here from the raw file.
2. `peft` saves an adapter of its own (random A and B on all seven
   projections), and `tessera generate --adapter` serves it.
"""

import json
import subprocess
import sys
import tempfile

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

ours, tessera, models = sys.argv[1], sys.argv[2], sys.argv[3]
config = LlamaConfig(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
    num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
)
torch.manual_seed(0)
base = LlamaForCausalLM(config)

# 1. Ours into peft.
model = PeftModel.from_pretrained(base, ours)
cfg = json.load(open(f"{ours}/adapter_config.json"))
scale = cfg["lora_alpha"] / cfg["r"]
raw = load_file(f"{ours}/adapter_model.safetensors")
checked = 0
for name, module in model.named_modules():
    if hasattr(module, "lora_A") and "default" in module.lora_A:
        prefix = "base_model.model." + name.removeprefix("base_model.model.")
        a = raw[f"{prefix}.lora_A.weight"]
        b = raw[f"{prefix}.lora_B.weight"]
        assert torch.equal(module.lora_A["default"].weight.data, a), name
        assert torch.equal(module.lora_B["default"].weight.data, b), name
        expected = scale * (b @ a)
        delta = module.get_delta_weight("default")
        assert torch.allclose(delta, expected, atol=1e-6), name
        checked += 1
assert checked == 30 * len(cfg["target_modules"]), checked
print(f"peft loaded {ours}: {checked} LoRA pairs, values and merged deltas identical")

# 2. peft's into Tessera.
torch.manual_seed(1)
fresh = LlamaForCausalLM(config)
peft_cfg = LoraConfig(
    r=4, lora_alpha=8, init_lora_weights=False, task_type="CAUSAL_LM",
    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
)
theirs = get_peft_model(fresh, peft_cfg)
with tempfile.TemporaryDirectory() as out:
    theirs.save_pretrained(out)
    text = json.load(open(f"{out}/adapter_config.json"))
    text["base_model_name_or_path"] = "HuggingFaceTB/SmolLM2-135M-Instruct"
    json.dump(text, open(f"{out}/adapter_config.json", "w"))
    run = subprocess.run(
        [tessera, "generate", "--models-dir", models, "--adapter", out,
         "--prompt", "Hello", "--max-tokens", "4"],
        capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stderr
    print("tessera served the adapter peft saved:", repr(run.stdout.strip()))
