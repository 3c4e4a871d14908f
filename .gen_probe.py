import sys, time, tempfile, torch
sys.path.insert(0, ".")
from pathlib import Path
from bench.gpu_check import prepare_model
from transformers import AutoModelForCausalLM, AutoTokenizer
model, _ = prepare_model(Path(tempfile.mkdtemp()), False)
tok = AutoTokenizer.from_pretrained(model)
lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16).cuda().eval()
ids = tok(["<human>: Tell me about the water cycle.\n<bot>:"], return_tensors="pt").to("cuda")
print("gen config", lm.generation_config)
def t(ctx, **kw):
    base = dict(max_new_tokens=64, min_new_tokens=64, do_sample=False, pad_token_id=tok.pad_token_id)
    base.update(kw)
    with ctx():
        lm.generate(**ids, **{**base, "max_new_tokens": 4, "min_new_tokens": 4})
        torch.cuda.synchronize(); s = time.perf_counter()
        lm.generate(**ids, **base)
        torch.cuda.synchronize()
    return (time.perf_counter() - s) / 64 * 1000
for name, ctx, kw in [("no_grad", torch.no_grad, {}), ("inference_mode", torch.inference_mode, {}),
                      ("no_grad, sampling knobs None", torch.no_grad, dict(temperature=None, top_p=None, top_k=None)),
                      ("no_grad, eos list", torch.no_grad, dict(eos_token_id=[tok.eos_token_id])),
                      ("no_grad, no min_new_tokens", torch.no_grad, dict(min_new_tokens=0)),
                      ("no_grad again", torch.no_grad, {})]:
    print(f"{name}: {t(ctx, **kw):.1f} ms/token", flush=True)
