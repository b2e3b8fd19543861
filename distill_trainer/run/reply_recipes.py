"""Every reply recipe's validate steps by name, for `distill-trainer validate` (a recipe imports only its
own, so its code digest holds no other recipe's checks).

    REPLY_RECIPES["distill_document"].data_arguments     # KnowledgeArguments
"""

from __future__ import annotations

from distill_trainer.run.validate_document import DOCUMENT_RECIPE
from distill_trainer.run.validate_replies import CONTEXT_RECIPE

REPLY_RECIPES = {recipe.name: recipe for recipe in (CONTEXT_RECIPE, DOCUMENT_RECIPE)}
