"""timm models: names, pretrained weights offline, a local weights file, the staged splitter."""

from __future__ import annotations

import time
from functools import partial

import pytest
import torch
from fastai.callback.core import Callback, CancelFitException
from fastai.optimizer import SGD
from fastai.torch_core import norm_bias_params

from conftest import tiny_learner

from fasttricks.models import (
    WeightsUnavailableError,
    check_timm_name,
    create_model,
    timm_splitter,
)
from fasttricks.recipes import build_learner, load_recipe

DIGITS = {"name": "digits_timm", "data": {"name": "digits", "bs": 32},
          "model": {"name": "timm:test_resnet"}, "schedule": {"epochs": 1}, "fp16": False}


def test_unknown_timm_name_suggests_at_most_five_close_names():
    with pytest.raises(KeyError) as info:
        check_timm_name("resnet_18")
    msg = str(info.value)
    suggested = msg.split("closest: ")[1].split(" (")[0].split(", ")
    assert "'resnet18'" in suggested and 1 <= len(suggested) <= 5
    assert len(msg) < 300  # not timm's whole list
    with pytest.raises(KeyError, match="recipe key 'model.name': unknown timm model 'resnet_18'"):
        load_recipe({**DIGITS, "model": {"name": "timm:resnet_18"}})
    assert check_timm_name("resnet18.a1_in1k") == "resnet18.a1_in1k"  # a pretrained tag


def test_pretrained_offline_fails_fast_naming_the_model_and_the_weights_key(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as info:
        create_model("timm:resnet18", 3, 5, pretrained=True)
    assert time.perf_counter() - start < 5
    msg = str(info.value)
    assert "'resnet18'" in msg and "model.weights" in msg and "HF_HUB_OFFLINE" in msg
    assert isinstance(info.value, FileNotFoundError)  # command lines print it as one line


def test_pretrained_with_a_hub_that_does_not_answer_fails_within_the_probe_timeout(
        monkeypatch):
    import socket

    import fasttricks.models as models

    silent = socket.socket()  # accepts connections, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/model.safetensors"
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(models, "_cached_pretrained_file", lambda cfg: None)
    monkeypatch.setattr(models, "_weights_urls", lambda cfg: [url])
    monkeypatch.setattr(models, "_PROBE_TIMEOUT_S", 0.5)
    start = time.perf_counter()
    try:
        with pytest.raises(WeightsUnavailableError, match="'resnet18'.*model.weights"):
            create_model("timm:resnet18", 3, 5, pretrained=True)
    finally:
        silent.close()
    assert time.perf_counter() - start < 2.5


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weights_file_loads_the_body_and_recreates_the_head(tmp_path, suffix):
    import timm

    torch.manual_seed(123)
    source = timm.create_model("test_resnet", pretrained=False, num_classes=1000)
    with torch.no_grad():  # known, non-default values everywhere
        for p in source.parameters():
            p.add_(torch.randn_like(p))
    state = source.state_dict()
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"model": state}, path)  # fastai's learn.save(with_opt=True) layout
    recipe = load_recipe(DIGITS, {"model.weights": str(path)})
    assert recipe["model"]["weights"] == str(path)
    learn = build_learner(recipe)
    model = learn.model.cpu()
    n_classes = len(learn.dls.vocab)
    assert model.get_classifier().out_features == n_classes == 10
    loaded = model.state_dict()
    for key, value in state.items():
        if key.startswith("fc."):
            continue
        if key == "conv1.0.weight":  # digits are grayscale: timm sums the RGB filters
            assert torch.allclose(loaded[key], value.sum(dim=1, keepdim=True))
        else:
            assert torch.equal(loaded[key], value), key
    assert loaded["fc.weight"].shape == (10, state["fc.weight"].shape[1])


def test_weights_file_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        create_model("timm:test_resnet", 3, 4, weights=str(tmp_path / "nope.pth"))
    bad = tmp_path / "other.pth"
    torch.save(create_model("timm:test_vit", 3, 4).state_dict(), bad)
    with pytest.raises(ValueError, match="does not fit this model"):
        create_model("timm:test_resnet", 3, 4, weights=str(bad))
    with pytest.raises(TypeError, match="model.pretrained"):
        load_recipe(DIGITS, {"model.pretrained": "yes"})


# ------------------------------------------------------------------------------ the splitter


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet", "test_vit"])
def test_timm_splitter_gives_early_body_late_body_and_head(name):
    model = create_model(f"timm:{name}", 3, 4)
    groups = timm_splitter(model)
    assert len(groups) == 3
    ids = [p for g in groups for p in g]
    assert sorted(map(id, ids)) == sorted(map(id, model.parameters()))  # each once, none lost
    assert [id(p) for p in groups[2]] == [id(p) for p in model.get_classifier().parameters()]
    order = {id(p): i for i, p in enumerate(model.parameters())}
    assert max(order[id(p)] for p in groups[0]) < min(order[id(p)] for p in groups[1])


def test_timm_splitter_follows_fastais_resnet_cut():
    model = create_model("timm:resnet18", 3, 4)
    early, late, head = timm_splitter(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)].split(".")[0] for p in early} == {"conv1", "bn1", "layer1", "layer2"}
    assert {names[id(p)].split(".")[0] for p in late} == {"layer3", "layer4"}
    assert {names[id(p)] for p in head} == {"fc.weight", "fc.bias"}


class _OneStep(Callback):
    """Stop after the first training batch (its step and zero_grad done)."""

    order = 100

    def after_batch(self):
        if self.training:
            raise CancelFitException()


def _changed_after_one_step(learn, prepare):
    prepare()
    before = {n: p.detach().clone() for n, p in learn.model.named_parameters()}
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, lr=0.5, cbs=[_OneStep()])
    return {n for n, p in learn.model.named_parameters() if not torch.equal(p, before[n])}


def test_staged_unfreezing_trains_exactly_the_groups_it_says():
    torch.manual_seed(0)
    model = create_model("timm:test_resnet", 3, 4)
    with torch.no_grad():  # no zero-initialised norm weights: every parameter gets a gradient
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(16, 3, 32, 32)
    y = torch.randint(0, 4, (16,))
    learn = tiny_learner(model, x, y, bs=16, opt_func=partial(SGD, mom=0.0))
    learn.splitter = timm_splitter
    learn.create_opt()
    name_of = {id(p): n for n, p in model.named_parameters()}
    groups = [{name_of[id(p)] for p in g} for g in learn.opt.param_lists]
    norm = {name_of[id(p)] for p in norm_bias_params(model, with_bias=False)}  # train_bn
    assert len(groups) == 3 and norm

    def expected(trained_groups):
        return set().union(*(groups[i] for i in trained_groups)) | norm

    assert _changed_after_one_step(learn, learn.freeze) == expected([2])
    assert _changed_after_one_step(learn, lambda: learn.freeze_to(-2)) == expected([1, 2])
    assert _changed_after_one_step(learn, learn.unfreeze) == expected([0, 1, 2])
    # frozen groups' norm layers train only because of train_bn: without it they stay put
    learn.train_bn = False
    learn.create_opt()
    assert _changed_after_one_step(learn, learn.freeze) == groups[2]
