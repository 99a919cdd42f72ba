"""The libraries users train with, run with their default arguments on converted models: the
Hugging Face ``Trainer`` (tiny randomly initialised configs, no download) and Lightning (fit,
checkpoint, reload, test for every rule).  Both install with the ``integrations`` extra, which
CI installs, so these tests run there rather than skip.

Each gradient is computed here from the formulas (e at the logits, e·B_l at each block output,
each block's own vector-Jacobian product through plain forward hooks) or with plain autograd
on a copy of the unconverted model, never taken from the library's output.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import os

import pytest
import torch
import torch.nn.functional as F

import ssdfa
from test_wrapper_first_call import assert_same, image_data, rule_gradients, tiny_cnn


def need(name):
    """The package, or a skip outside CI; in CI (CI sets CI=true; SSDFA_CI=1 does the same by hand) missing is a failure."""
    if os.environ.get("SSDFA_CI") or os.environ.get("CI"):
        return importlib.import_module(name)
    return pytest.importorskip(
        name, reason=f"{name} is in the integrations extra: pip install -e '.[integrations]'"
    )


transformers = need("transformers")
lightning = need("lightning")

VOCAB, SEQ, ROWS = 32, 10, 8
BLOCKS = ["transformer.h.0", "transformer.h.1"]


def tiny_gpt2(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=4,
        vocab_size=VOCAB,
        n_positions=16,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(cfg)


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=16,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.LlamaForCausalLM(cfg)


def lm_data(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (ROWS, SEQ), generator=g)
    return [{"input_ids": row, "labels": row.clone()} for row in ids], ids


def own_loss(out, labels, num_items_in_batch=None):
    """A loss outside the model: every position predicts its own label (no shift)."""
    return F.cross_entropy(out.logits.flatten(0, 1), labels.flatten())


def shifted_error(z, ids):
    """e = ∂L/∂z for Hugging Face's causal-LM loss: position t predicts ids[t+1], the mean over
    the B·(T-1) predictions; the last position gets no error."""
    p = z.softmax(-1)
    e = torch.zeros_like(z)
    e[:, :-1] = (p[:, :-1] - F.one_hot(ids[:, 1:], VOCAB).to(z.dtype)) / (ids.shape[0] * (ids.shape[1] - 1))
    return e


def unshifted_error(z, ids):
    return (z.softmax(-1) - F.one_hot(ids, VOCAB).to(z.dtype)) / ids.numel()


def dfa_gradients(net, matrices, ids, error):
    """DFA on the GPT-2 blocks from the formulas: the output block's true gradient through the
    cut, plus, per block output h_l (batch, seq, d), the VJP of e_t·B_l (B_l: (vocab, d))."""
    outs, handles = [], []
    for name in BLOCKS:

        def cut(mod, inp, out):
            outs.append(out)
            return out.detach()

        handles.append(net.get_submodule(name).register_forward_hook(cut))
    try:
        z = net(input_ids=ids).logits
    finally:
        for h in handles:
            h.remove()
    params = dict(net.named_parameters())
    e = error(z.detach(), ids)  # (batch, seq, vocab)
    total = dict(
        zip(params, torch.autograd.grad(z, list(params.values()), e, allow_unused=True, retain_graph=True))
    )
    for h, b in zip(outs, matrices):
        grads = torch.autograd.grad(h, list(params.values()), e @ b, allow_unused=True, retain_graph=True)
        for n, g in zip(params, grads):
            if g is not None:
                total[n] = g if total[n] is None else total[n] + g
    return {n: g for n, g in total.items() if g is not None}


# -- Hugging Face Trainer ----------------------------------------------------------------------
class _Grads(transformers.TrainerCallback):
    """The gradients the optimizer is about to apply at the first step."""

    def __init__(self, model):
        self.model, self.grads = model, None

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.grads is None:
            net = getattr(self.model, "net", self.model)  # a converted or a plain model
            self.grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def trainer_for(model, tmp_path, **kwargs):
    """Trainer with its default arguments but for: one step on the whole set (so the batch is
    known), plain SGD, no clipping (so the gradient applied is the one computed), CPU, quiet."""
    args = transformers.TrainingArguments(
        str(tmp_path),
        per_device_train_batch_size=ROWS,
        per_device_eval_batch_size=ROWS,
        max_steps=1,
        optim="sgd",
        learning_rate=0.1,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
    )
    data, _ = lm_data()
    grads = _Grads(model)
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=data, eval_dataset=data, callbacks=[grads], **kwargs
    )
    return trainer, grads


def test_the_converted_model_shows_the_wrapped_models_signature():
    net = tiny_gpt2()
    model = ssdfa.convert(net, "dfa", seed=0)
    want = list(inspect.signature(net.forward).parameters)
    got = list(inspect.signature(model.forward).parameters)
    assert got == [*want[:-1], "target", want[-1]]  # target before **kwargs
    assert "labels" in inspect.signature(type(model).forward).parameters  # what find_labels reads
    assert isinstance(model, ssdfa.FeedbackModel) and type(model).__name__ == "FeedbackModel"
    clone = copy.deepcopy(model)
    assert inspect.signature(clone.forward) == inspect.signature(model.forward)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_trainer_defaults_train_bp_as_they_train_the_plain_model(arch, tmp_path):
    """The Trainer keeps the columns forward names (input_ids, labels), the model computes its
    shifted loss, and the step and evaluate() match the same Trainer on the unconverted model
    (a Llama-style ``...ForCausalLM`` counts its loss over labels[..., 1:], which the Trainer
    learns from the model's loss_type)."""
    plain = tiny_gpt2() if arch == "gpt2" else tiny_llama()
    model = ssdfa.convert(copy.deepcopy(plain), "bp")
    runs = []
    for i, m in enumerate((plain, model)):
        trainer, grads = trainer_for(m, tmp_path / str(i))
        trainer.train()
        runs.append((grads.grads, trainer.evaluate()["eval_loss"]))
    assert_same(runs[1][0], runs[0][0])
    assert runs[1][1] == pytest.approx(runs[0][1], rel=1e-6)


@pytest.mark.parametrize("method", ["dfa", "ssdfa"])
def test_trainer_defaults_train_a_direct_rule_with_compute_loss_func(method, tmp_path):
    """A loss outside the model (``compute_loss_func``): the Trainer pops labels, the model runs
    without them, and the hidden blocks get e·B_l."""
    model = ssdfa.convert(tiny_gpt2(), method, seed=0)
    trainer, grads = trainer_for(model, tmp_path, compute_loss_func=own_loss)
    reference = copy.deepcopy(model.net)  # before the step
    trainer.train()
    _, ids = lm_data()
    matrices = list(model.feedback_matrices().values())
    assert_same(grads.grads, dfa_gradients(reference, matrices, ids, unshifted_error))
    assert any(".h.0." in n for n in grads.grads), "the hidden blocks learned nothing"
    with torch.no_grad():
        want = own_loss(model.net(input_ids=ids), ids).item()
    assert trainer.evaluate()["eval_loss"] == pytest.approx(want, rel=1e-5)


def test_trainer_defaults_train_dfa_with_the_models_own_loss(tmp_path):
    """GPT-2 given labels= computes its shifted loss inside forward; e is still taken at the
    logits, so the hidden blocks get e_t·B_l with e of the shifted loss."""
    model = ssdfa.convert(tiny_gpt2(), "dfa", seed=0)
    trainer, grads = trainer_for(model, tmp_path)
    reference = copy.deepcopy(model.net)
    trainer.train()
    _, ids = lm_data()
    matrices = list(model.feedback_matrices().values())
    # the Trainer hands the model num_items_in_batch = the B·T labels it counts, so the shifted
    # loss it trains on is sum / (B·T): (T-1)/T of the model's own mean (the plain GPT-2 under
    # the same Trainer gets exactly that too); e follows the loss the Trainer really computed
    T = ids.shape[1]
    assert_same(
        grads.grads, dfa_gradients(reference, matrices, ids, lambda z, i: shifted_error(z, i) * (T - 1) / T)
    )
    with torch.no_grad():  # evaluate() hands num_items_in_batch over as well
        want = model.net(input_ids=ids, labels=ids).loss.item() * (T - 1) / T
    assert trainer.evaluate()["eval_loss"] == pytest.approx(want, rel=1e-5)


# -- Lightning: fit, checkpoint, reload, test, for every rule ------------------------------------
class LitClassifier(lightning.LightningModule):
    """A LightningModule as users write one, with the model converted in __init__."""

    def __init__(self, method: str):
        super().__init__()
        self.save_hyperparameters()
        shape = {"example_input": torch.zeros(2, 1, 6, 6)} if method == "dkp" else {}  # B_l learned
        self.model = ssdfa.convert(tiny_cnn(), method, seed=0, **shape)
        self.first = None  # (gradients, B_l) at the first optimizer step

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.model(x, target=y), y)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", F.cross_entropy(self.model(x), y))

    def on_before_optimizer_step(self, optimizer):
        if self.first is None:
            self.first = (
                {
                    n.replace(".layer.", "."): p.grad.clone()
                    for n, p in self.model.net.named_parameters()
                    if p.grad is not None and not n.endswith("feedback")
                },
                self.model.feedback_matrices(),
            )

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _lightning_trainer(root):
    return lightning.Trainer(
        default_root_dir=str(root),
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


@pytest.mark.parametrize("method", sorted(ssdfa.rules.RULES))
def test_lightning_fit_checkpoint_reload_test(method, tmp_path):
    x, y = image_data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    lit = LitClassifier(method)
    trainer = _lightning_trainer(tmp_path)
    trainer.fit(lit, loader)  # the sanity check has no val loader; the first call trains
    grads, matrices = lit.first
    if method != "forward_grad":  # a random estimate: tests/test_rules_forward_grad.py checks it
        assert_same(grads, rule_gradients(method, tiny_cnn(), matrices, x[:4], y[:4]))

    path = trainer.checkpoint_callback.best_model_path
    reloaded = LitClassifier.load_from_checkpoint(path)  # a fresh, unsized model loads it
    want = lit.model.state_dict()
    assert reloaded.model.state_dict().keys() == want.keys()
    for k, v in reloaded.model.state_dict().items():
        assert torch.equal(v, want[k]), k
    (result,) = _lightning_trainer(tmp_path).test(reloaded, loader, verbose=False)  # inference_mode
    with torch.no_grad():
        plain = lit.model.unwrap().eval()
        expected = (F.cross_entropy(plain(x[:4]), y[:4]) + F.cross_entropy(plain(x[4:]), y[4:])) / 2
    assert result["test_loss"] == pytest.approx(expected.item(), rel=1e-5)
    for k, v in reloaded.model.state_dict().items():  # the first call kept the loaded B_l
        assert torch.equal(v, want[k]), k
    reloaded.train()  # and it trains on from there: no inference tensors were left behind
    F.cross_entropy(reloaded.model(x, target=y), y).backward()
    assert reloaded.model.unwrap()[-1].weight.grad is not None
