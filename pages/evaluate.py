"""Evaluate: a folder of images in, the papers' faithfulness table out (AD/IC, ROAD, deletion/insertion, cost)."""

from __future__ import annotations

import streamlit as st

from pages._shared import guarded, job_status, live, model_or_stop, session_folder, workspace
from tame_core.studio import (
    DEFAULT_FILLS,
    DEFAULT_STEPS,
    FILLS,
    MAX_THUMBNAIL_IMAGES,
    SPLITS,
    TABLE_COLUMNS,
    WITHIN_NOISE,
    EvaluationConfig,
    TameError,
    can_resume_evaluation,
    column_title,
    comparison_rows,
    default_pair,
    evaluation_cost,
    evaluation_thumbnails,
    image_count,
    image_total,
    method_names,
    metric_spec,
    per_image_rows,
    plots,
    public_message,
    server_folder,
    start_evaluation,
    with_relative_times,
)

DEFAULT_METHODS = ("tame", "gradcam", "gradcam++")


def config_form() -> EvaluationConfig | None:
    folder = st.text_input("Folder of images (searched recursively)", key="eval_folder", placeholder="/data/imagenet-samples")
    available = method_names()
    methods = st.multiselect(
        "Methods",
        available,
        default=[m for m in DEFAULT_METHODS if m in available],
        key="eval_methods",
        help="Score-CAM, Ablation-CAM and RISE need hundreds to thousands of forward passes per image.",
    )
    split, limit, steps, deletion, insertion = st.columns(5)
    values = {
        "split": split.selectbox("Split", SPLITS, key="eval_split", help="train / heldout: the project's ImageNet split"),
        "limit": limit.number_input("Images (0 = all)", 0, 100_000, 20, key="eval_limit") or None,
        "steps": steps.select_slider("Curve steps", [10, 20, 25, 50, 100], value=DEFAULT_STEPS, key="eval_steps"),
        "baseline": {
            "deletion": deletion.selectbox(
                "Deleted pixels become", FILLS, FILLS.index(DEFAULT_FILLS["deletion"]), key="eval_fill_deletion",
                help="mean: the classifier's mean colour (RISE's deletion)",
            ),
            "insertion": insertion.selectbox(
                "Insertion starts from", FILLS, FILLS.index(DEFAULT_FILLS["insertion"]), key="eval_fill_insertion",
                help="blur: RISE's Gaussian blur (11 x 11, sigma 5), RISE's insertion",
            ),
        },
    }
    if not folder.strip() or not methods:
        st.info("Name a folder of images on the server and at least one method.")
        return None
    path = server_folder(folder, "Folder")
    if not path.is_dir():
        st.error(f"{folder.strip()}: not a folder on this server")
        return None
    return EvaluationConfig(data=str(path), methods=tuple(methods), **values)


def results(job) -> None:
    report = job.result
    rows = with_relative_times(report.rows())
    shown = ["method", *(c for c in TABLE_COLUMNS if any(c in row for row in rows)), "× TAME time", "images"]
    table = [{column_title(c) if c in TABLE_COLUMNS else c: row.get(c) for c in shown} for row in rows]
    for shown_row, row in zip(table, rows):  # a time too short to mean anything: a dash, the reason in the help
        ms, relative = shown_row[column_title("ms_per_image")], shown_row["× TAME time"]
        shown_row[column_title("ms_per_image")] = "–" if ms is None else f"{ms:.1f}"
        shown_row["× TAME time"] = "–" if relative is None else f"{relative:.1f}×"
    why = "; ".join(f"{row['method']}: {row['timing']}" for row in rows if row["ms_per_image"] is None)
    config = {
        **{column_title(c): st.column_config.NumberColumn(format="%.3f") for c in shown if c in TABLE_COLUMNS},
        column_title("ms_per_image"): st.column_config.TextColumn(help=f"– = no time: {why}" if why else None),
        "× TAME time": st.column_config.TextColumn(help=f"– = no time: {why}" if why else None),
    }
    config[column_title("forward_passes")] = st.column_config.NumberColumn(format="%.1f")
    config[column_title("area")] = st.column_config.NumberColumn(format="%.1f", help=metric_spec("area").description)
    config.update(curve_headings())
    costs = {column_title(c) for c in ("ms_per_image", "forward_passes")} | {"× TAME time", "images"}
    titles = list(table[0]) if table else []
    for columns in ([t for t in titles if t not in costs], ["method", *(t for t in titles if t in costs)]):
        st.dataframe(table, hide_index=True, column_order=columns, column_config=config)  # one table would not fit
    st.caption(
        "↓ lower is better, ↑ higher is better; area (how much of the picture the map keeps) has no better way, "
        "but a bigger map wins AD and IC without being more faithful. Every metric (ROAD per level too) is in the downloads. Times are "
        "each method's own work per image, warm (each cheap method runs once untimed first)."
    )
    noisy = [f"{row['method']}: {row['timing']}" for row in rows if row["ms_per_image"] is None]
    if noisy:
        st.caption("No time shown for " + "; ".join(noisy) + ".")
    if report.skipped:
        with st.expander(f"{len(report.skipped)} unreadable images were skipped"):
            st.write("\n".join(f"- {line}" for line in report.skipped))
    csv, raw, images = st.columns(3)
    csv.download_button("Results (.csv)", report.to_csv(), file_name="results.csv", mime="text/csv", key="eval_csv")
    raw.download_button("Results (.json)", report.to_json(), file_name="results.json", mime="application/json", key="eval_json")
    images.download_button(
        "Per image (.csv)", report.per_image_csv(), file_name="per_image.csv", mime="text/csv", key="eval_per_image"
    )
    per_image_table(report, evaluation_thumbnails(job))
    comparison(report)


def curve_headings() -> dict[str, object]:
    """Narrower headings for the curves' AUC columns ("Del ↓"), so that the tables fit a 1280 px window."""
    return {
        column_title(curve): st.column_config.NumberColumn(
            column_title(curve).replace(curve, short), format="%.3f", help=f"area under the {curve.split('_')[0]} curve"
        )
        for curve, short in (("deletion_auc", "Del"), ("insertion_auc", "Ins"))
    }


def per_image_table(report, thumbnails) -> None:
    rows = per_image_rows(report, thumbnails)
    if not rows:
        return
    st.subheader("Image by image")
    metrics = [name for name in rows[0] if name not in ("image", "method", "picture", "map")]
    st.dataframe(
        rows,
        hide_index=True,
        column_config={
            "image": st.column_config.TextColumn("image", help="the path inside the folder"),
            "picture": st.column_config.ImageColumn("picture", help="the centre crop the classifier sees"),
            "map": st.column_config.ImageColumn("map", help="this method's map over it"),
            **{name: st.column_config.NumberColumn(format="%.3f") for name in metrics},
            **curve_headings(),
        },
        column_order=[name for name in rows[0] if name != "picture"],  # the map shows the picture under it
        key="eval_per_image_table",
    )
    count = image_count(report)
    cut = f" Thumbnails for the first {MAX_THUMBNAIL_IMAGES} of {count} images only." if count > MAX_THUMBNAIL_IMAGES else ""
    st.caption(
        "One row per image and method. Click a heading to sort: AD100 ↓ sorted from high to low, for example, "
        "puts the images a method explains worst first; hover a thumbnail to enlarge it." + cut
    )


def comparison(report) -> None:
    methods = list(report.methods)
    pair = default_pair(methods)
    if pair is None:
        st.caption("Evaluate two methods or more to compare them image by image.")
        return
    st.subheader("Paired comparison")
    first, second = st.columns(2)
    a = first.selectbox("Method", methods, index=methods.index(pair[0]), key=f"eval_compare_a-{'-'.join(methods)}")
    b = second.selectbox("against", methods, index=methods.index(pair[1]), key=f"eval_compare_b-{'-'.join(methods)}")
    if a == b:
        st.info("Pick two different methods.")
        return
    rows = comparison_rows(report, a, b)
    if not rows:
        st.info(f"{a} and {b} have no metric measured on the same images.")
        return
    st.plotly_chart(plots.comparison_figure(rows, a, b), key="eval_compare_figure", width="stretch")
    st.dataframe(
        rows,
        hide_index=True,
        column_config={
            "mean difference": st.column_config.NumberColumn(f"mean of {a} − {b}", format="%+.4f"),
            "low": st.column_config.NumberColumn("95% interval from", format="%+.4f"),
            "high": st.column_config.NumberColumn("to", format="%+.4f"),
            "verdict": st.column_config.TextColumn(f"verdict for {a}"),
        },
        height="content",  # every metric in view (one row each), as in the figure above
        key="eval_compare_table",
    )
    st.caption(
        f"Each image's value for {a} minus its value for {b}, averaged over the images both measured; the "
        "interval comes from resampling the images (a bootstrap). " + WITHIN_NOISE
    )


def body() -> None:
    st.title("Evaluate")
    st.caption(
        "Each image is centre-cropped as the classifier sees it and explained for its top-1 class by every "
        "method; the maps are then measured in batches. A stopped run resumes from the images already done."
    )
    model = model_or_stop()
    ws = workspace()
    config = config_form()
    job = ws.job("evaluate")
    running = job is not None and job.running
    count = None
    if config is not None:
        try:
            count = image_total(config)
        except TameError as error:
            st.error(public_message(str(error)))
    if config is not None and count is not None:
        states = session_folder().evaluations  # this session's: a fresh run never deletes another session's
        estimate = evaluation_cost(model, config, count)
        start, again = st.columns(2)
        label = f"Evaluate {count} images: {estimate.text()}"
        fresh = start.button(label, type="primary", disabled=running, key="eval_start")
        resume = can_resume_evaluation(config, model.choice, states) and again.button(
            "Resume the stopped run", disabled=running, key="eval_resume"
        )
        if fresh or resume:
            start_evaluation(ws, model, config, states, estimate, fresh=fresh)
            st.rerun()
    if job is None:
        return

    def draw() -> None:
        job_status(job, "evaluate")
        if job.finished and job.result is not None:
            results(job)

    live(job, draw, every=1.0)


guarded(body)
