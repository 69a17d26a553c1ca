"""Branches: switch the head's branches on and off and see what each tapped layer adds to the map."""

from __future__ import annotations

import streamlit as st

from pages._shared import class_picker, colour_scale, guarded, image_or_stop, job_status, live, model_or_stop, workspace
from tame_core.metrics import get_metric
from tame_core.studio import ActiveImage, Job, LoadedModel, render
from tame_core.studio.ablation import (
    MAX_COMBINATIONS_BRANCHES,
    AblationRow,
    BranchTerms,
    ablation_rows,
    branch_names,
    combinations,
    feature_sizes,
    plain_reading,
)

FRACTIONS = (100, 50, 15)  # % of the map's pixels kept
NEARLY_FLAT = 0.05  # branches that move less of the map than this leave it nearly flat
METRIC_HELP = {  # about this one picture, not a set of images
    "AD": "How much the model's confidence drops, in % of its confidence on the whole picture, when only the "
    "map's top {kept} % of pixels are kept (0 when it does not drop)",
    "IC": "100 % when keeping only the map's top {kept} % of pixels raises the model's confidence on this picture, "
    "else 0 %",
}


def branch_toggles(model: LoadedModel, names: list[str]) -> tuple[bool, ...]:
    ws = workspace()
    current = ws.branch_mask(model)
    columns = st.columns(len(model.layers))
    mask = tuple(
        column.toggle(
            name,
            value=current[index],
            key=f"branch-{model.tag}-{index}",
            help=f"What the model's layer {layer} adds to the map; its grid over the picture is in brackets "
            "(a finer grid sees finer detail)",
        )
        for index, (column, layer, name) in enumerate(zip(columns, model.layers, names))
    )
    ws.set_branch_mask(model, mask)
    return mask


def mask_label(names: list[str], mask: tuple[bool, ...]) -> str:
    return " + ".join(name.rsplit(", ", 1)[0] + ")" for name, on in zip(names, mask) if on)


def scores_panel(model: LoadedModel, image: ActiveImage, class_index: int, mask: tuple[bool, ...]) -> Job:
    """AD/IC of the current map, measured for every branch combination in the background."""
    ws = workspace()
    every_combination = len(mask) <= MAX_COMBINATIONS_BRANCHES  # else one job per mask
    tag = (model.key, image.digest, class_index, None if every_combination else mask)
    job = ws.job_for("ablation", tag)
    if job is None:
        explanation = ws.view(model, image, class_index)
        masks = combinations(len(mask), mask)
        job = ws.start_job("ablation", "Measuring AD/IC", lambda ctx: ablation_rows(model, explanation, masks, ctx), tag)

    def draw() -> None:
        job_status(job, "ablation")
        rows: list[AblationRow] | None = job.result
        if not rows:
            st.caption("Average Drop / Increase in Confidence appear here in a moment.")
            return
        by_mask = {row.mask: row for row in rows}
        full, row = by_mask.get((True,) * len(mask)), by_mask.get(mask)
        if row is None:
            st.info("Switch a branch on to measure its map.")
            return
        st.metric(
            "P(class | image × map)",
            f"{row.masked_probability:.1%}",
            delta=None
            if full is None or row is full
            else render.delta_text((row.masked_probability - full.masked_probability) * 100, 1, " pts"),
            help="The model's confidence in the class when the picture is dimmed where the map is cold: what "
            "the head is trained to keep high",
        )
        for column, kept in zip(st.columns(len(FRACTIONS)), FRACTIONS):
            for name, digits in ((f"AD{kept}", 1), (f"IC{kept}", 0)):  # IC of one picture is 0 or 100: "100.0%" would not fit
                spec = get_metric(name)
                column.metric(
                    name,
                    f"{row.scores[name]:.{digits}f}%",
                    delta=None
                    if full is None or row is full
                    else render.delta_text(row.scores[name] - full.scores[name], digits),
                    delta_color="inverse" if spec.direction == "lower" else "normal",
                    help=METRIC_HELP[name[:2]].format(kept=kept) + f"; {spec.direction} is better",
                )
        st.markdown(plain_reading(row, model.class_names[class_index]))
        single_image_note(row)

    live(job, draw)
    return job


def combinations_panel(job: Job, mask: tuple[bool, ...], names: list[str]) -> None:
    """Every branch combination's AD/IC, full width (its nine columns fit no side column)."""

    def draw() -> None:
        rows: list[AblationRow] | None = job.result
        if not rows or len(rows) < 2:
            return
        with st.expander("Every combination of branches", expanded=False):
            st.dataframe(
                [
                    {
                        "branches on": " + ".join(name.split(" (")[0] for name, on in zip(names, r.mask) if on),
                        "current": "◀" if r.mask == mask else "",
                        "P(class | image × map)": r.masked_probability,
                        **r.scores,
                    }
                    for r in rows
                ],
                hide_index=True,
                column_config={
                    "branches on": st.column_config.TextColumn(help=" · ".join(names)),
                    "current": st.column_config.TextColumn("", width=32),
                    "P(class | image × map)": st.column_config.NumberColumn(
                        "P(class)", format="percent", help="The model's confidence in the class on the picture × map"
                    ),
                    **{
                        name: st.column_config.NumberColumn(
                            f"{name} {get_metric(name).arrow}", format="%.1f %%" if name.startswith("AD") else "%.0f %%"
                        )
                        for name in rows[0].scores
                    },
                },
            )

    live(job, draw)


def single_image_note(row: AblationRow) -> None:
    """Why one picture's AD is often 0 % and its IC 0 % or 100 %: the probabilities behind them."""
    if row.kept is None:
        return
    st.caption(
        f"On one picture these read off two probabilities per level. The whole picture gives "
        f"P(class) = {row.clean_probability:.1%}. IC is 100 % when the kept part scores higher, else 0 %; "
        "AD is the relative drop, 0 % when there is none."
    )
    st.dataframe(
        [
            {
                "pixels kept": f"{kept} %",
                "P(class)": probability,
                "vs whole picture": f"{(probability - row.clean_probability) * 100:+.1f} pts",
                "AD": row.scores.get(f"AD{kept}"),
                "IC": row.scores.get(f"IC{kept}"),
            }
            for kept, probability in row.kept.items()
        ],
        hide_index=True,
        column_order=("pixels kept", "P(class)", "vs whole picture", "AD"),  # IC is the sign of the change
        column_config={
            "P(class)": st.column_config.NumberColumn(format="percent"),
            "AD": st.column_config.NumberColumn(f"AD {get_metric('AD100').arrow}", format="%.1f %%"),
            "IC": st.column_config.NumberColumn(f"IC {get_metric('IC100').arrow}", format="%.0f %%"),
        },
    )


def contributions_panel(image: ActiveImage, terms: BranchTerms, mask: tuple[bool, ...], names: list[str]) -> None:
    """Each branch's signed term of the map, each on its own symmetric scale so that it is visible, with
    its share of the total in the caption."""
    st.caption(
        "Each branch's own term of the map for this class, before the sigmoid that makes the map: red raises "
        "the map, blue lowers it, white leaves it. Each is drawn on its own scale so that even a small one "
        "shows; the share says how much of the total each branch moves."
    )
    shares, scales = terms.share(), terms.own_scales()
    for column, name, term, on, share, scale in zip(st.columns(len(names)), names, terms.terms, mask, shares, scales):
        column.image(
            render.signed_overlay(image.preview, term, scale),
            caption=f"{name}{'' if on else ' (off)'}: {share:.0%} of the total (scale ±{scale:.2g})",
            output_format="JPEG",
        )
    st.image(render.colour_scale(("-max", "0", "+max"), None), caption="Each map's own scale, from its largest value.")


def body() -> None:
    st.title("Branches")
    model = model_or_stop()
    image = image_or_stop()
    ws = workspace()
    with st.spinner("Explaining…"):
        base = ws.explanation(model, image)
    st.caption(
        "One toggle per tapped layer. The map is re-fused from cached features as branches go on and off "
        "(no backbone run); each branch's own term of the map is shown below."
    )
    class_index = class_picker(model, image)
    names = branch_names(model.layers, feature_sizes(base))
    mask = branch_toggles(model, names)
    view = ws.view(model, image, class_index, mask)
    probability = float(base.with_classes(class_index).class_probs[0, 0])
    label = render.class_label(class_index, model.class_names)

    terms = ws.branch_terms(model, image, class_index)
    moved = sum(share for share, on in zip(terms.share(), mask) if on)
    left, right = st.columns(2, gap="large")  # the scores' three columns of metrics need half the width
    with left:
        if not any(mask):
            st.warning("All branches are off: the map is the fuser's bias alone, flat.")
        elif moved < NEARLY_FLAT:
            st.warning(
                f"The branches that are on move only {moved:.0%} of this map: it is nearly flat, and what shows "
                "is that small remainder stretched to the full colour range."
            )
        saliency = render.saliency(view)
        st.image(
            render.overlay_image(image.pixels, saliency),
            caption=f"{label}: p = {probability:.1%} on the image; map from {mask_label(names, mask) or 'no branch'}",
            output_format="JPEG",
        )
        colour_scale()
    with right:
        st.subheader("What the map keeps")
        job = scores_panel(model, image, class_index, mask)
    combinations_panel(job, mask, names)

    st.subheader("Each branch's contribution")
    contributions_panel(image, terms, mask, names)


guarded(body)
