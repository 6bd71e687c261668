"""sources: on a user's data, `sft_demonstrations` and `eval_prompts` from their files or preferences.

The embedded world writes both itself (data_generation); this pipeline is what takes its
place when ``sources.kind`` is ``files``. Which node makes each dataset follows
``sources.sft`` and ``sources.eval_prompts`` (pipeline_registry passes them in).
"""

from kedro.pipeline import Pipeline, node

from .nodes import chosen_demonstrations, file_demonstrations, file_eval_prompts, heldout_eval_prompts


def create_pipeline(sft: str = "chosen", eval_prompts: str = "heldout", **kwargs) -> Pipeline:
    demonstrations = (
        node(chosen_demonstrations, "preferences_train", "sft_demonstrations", name="chosen_demonstrations")
        if sft == "chosen"
        else node(file_demonstrations, ["raw_demonstrations", "preferences_heldout", "preferences_audit"],
                  "sft_demonstrations", name="read_demonstrations")
    )
    prompts = (
        node(heldout_eval_prompts, ["preferences_heldout", "params:sources"], "eval_prompts",
             name="heldout_eval_prompts")
        if eval_prompts == "heldout"
        else node(file_eval_prompts, ["raw_eval_prompts", "preferences_train", "preferences_audit", "params:sources"],
                  "eval_prompts", name="read_eval_prompts")
    )
    return Pipeline([demonstrations, prompts])
