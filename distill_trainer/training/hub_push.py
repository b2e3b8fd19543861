"""The trainer's Hub behaviour: the student goes to the Hub once, when training is done."""

from __future__ import annotations

import os


class HubPushMixin:
    # The student goes to the Hub once, when training is done, as one folder: weights, model card and
    # recipe (see `distill_trainer.report.hub`). The stock Trainer would create the repository in
    # __init__, which fails an offline run before its first step, and push half-described checkpoints
    # while training.

    def init_hf_repo(self, token=None, private=None) -> None:
        self.hub_model_id = self.args.hub_model_id

    def _push_from_checkpoint(self, checkpoint_folder) -> None:
        return None

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token=None,
        revision=None,
        **kwargs,
    ):
        """Push `args.output_dir`, which must hold a student saved by `report.hub.save_student`."""
        if not self.is_world_process_zero():
            return None
        from distill_trainer.models.hub import push_student

        repo_id = self.args.hub_model_id or os.path.basename(os.path.normpath(self.args.output_dir))
        return push_student(
            self.args.output_dir,
            repo_id,
            token=token or self.args.hub_token,
            private=self.args.hub_private_repo,
            revision=revision or self.args.hub_revision,
            commit_message=commit_message,
        )
