"""Generation: from prompts to auditable HU volumes with the registered models.

    models = load_models(ModelRequest())                          # models.py: registry + lineage checks
    sampler = VolumeSampler(models, SamplerSettings.from_params(p, models), geometry_from_params(g, index))
    summary, items = generate_batch(sampler, expand_prompts(table, default_slice_count=…), BatchSettings(…))

Submodules are imported lazily (``from generatect_kedro.generation.sampler import …``) so that importing the
package stays cheap; `outputs` (the writer) is its own module.
"""
