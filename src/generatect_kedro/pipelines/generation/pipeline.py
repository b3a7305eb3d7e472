"""Generation pipeline wiring (see nodes.py)."""

from kedro.pipeline import Pipeline, node, pipeline

from generatect_kedro.pipelines.generation.nodes import generate_volumes, resolve_prompts
from generatect_kedro.pipelines.promotion.nodes import promote_generator
from generatect_kedro.serving import register_generator_node


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline([
        # promotion_report orders generation after promotion in `kedro run` ({} when generating on its own).
        node(resolve_prompts, inputs=["generation_prompts", "params:generation", "promotion_report"],
             outputs="generation_prompt_table",
             name="resolve_generation_prompts"),
        node(generate_volumes,
             inputs=["generation_prompt_table", "generation_cohort_geometry", "params:generation",
                     "params:transformer"],
             outputs=["generation_summary", "generation_items"], name="generate_volumes"),
        # The whole path as one servable pyfunc model, pinned to the champions just promoted.
        node(register_generator_node,
             inputs=["promotion_report", "params:generation", "generation_cohort_geometry"],
             outputs="generator_model_version", name="register_generator"),
        node(promote_generator, inputs=["generator_model_version", "params:promotion"],
             outputs="generator_promotion", name="promote_generator"),
    ])
