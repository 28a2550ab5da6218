"""`--model.init_from`: weights only from a base checkpoint, everything else fresh, lineage recorded."""

import torch
import yaml

from lm.checkpoint import file_sha256, load_checkpoint
from lm.cli import main
from lm.module import LanguageModel
from tests.conftest import write_config


def test_continued_pretraining_starts_fresh_from_base_weights(text_corpus, tmp_path):
    base_run, cpt_run = tmp_path / "base", tmp_path / "cpt"
    main(["fit", "--config", write_config(tmp_path / "base.yaml", text_corpus, base_run, **{"trainer.max_steps": 5})])
    base_ckpt = base_run / "checkpoints" / "last.ckpt"

    # The architecture comes from the base: the CPT config states none.
    config = yaml.safe_load(open(write_config(tmp_path / "cpt.yaml", text_corpus, cpt_run)))
    del config["model"]["config"]
    config["model"].update(optim={"lr": 1e-3, "warmup_steps": 3}, init_from=str(base_ckpt))
    config["trainer"]["max_steps"] = 3
    (tmp_path / "cpt.yaml").write_text(yaml.safe_dump(config))

    start = LanguageModel(init_from=str(base_ckpt))
    base_state = {k.removeprefix("model."): v for k, v in load_checkpoint(base_ckpt)["state_dict"].items()}
    for name, tensor in start.model.state_dict().items():
        torch.testing.assert_close(tensor, base_state[name], rtol=0, atol=0)

    main(["fit", "--config", str(tmp_path / "cpt.yaml")])
    ckpt = load_checkpoint(cpt_run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 3  # counters from zero, not 6 + 3
    assert ckpt["tokens_seen"] == 3 * 4 * 32
    assert ckpt["lineage"]["sha256"] == file_sha256(base_ckpt)
    assert ckpt["lineage"]["tokens_seen"] == 5 * 4 * 32 and ckpt["lineage"]["global_step"] == 5  # final step
    # A fresh optimizer and schedule: Adam's step count and the LR restart with the new warmup.
    adam_state = ckpt["optimizer_states"][0]["state"]
    assert all(int(s["step"]) == 3 for s in adam_state.values())
    assert ckpt["lr_schedulers"][0]["last_epoch"] == 3
    assert ckpt["hyper_parameters"]["config"]["n_embd"] == 32 and ckpt["hyper_parameters"]["init_from"] is None

    # The continued model reloads on its own, without the base file.
    base_ckpt.unlink()
    reloaded = LanguageModel.load_from_checkpoint(cpt_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert reloaded.config.n_embd == 32
