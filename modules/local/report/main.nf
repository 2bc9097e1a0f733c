process REPORT {
    tag "${meta.id}"
    label 'process_low'
    errorStrategy { SetAside.strategy(task, meta) }  // lib/SetAside.groovy

    input:
    tuple val(meta), path(annotated), path(history), path(qc_summary), path(diagnostics), path(specificity)
    val params_json

    output:
    tuple val(meta), path("report")           , emit: report
    tuple val(meta), path("report/*_mqc.*")   , emit: mqc
    path "versions.yml"                       , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    // --no-umap comes from conf/modules.config (ext.args); no --model: the fit the report draws comes
    // from the annotated h5ad (annotate --model-info), so the task loads neither the model file nor torch
    def args = task.ext.args ?: ''
    """
    cat <<'END_PARAMS' > params.json
    ${params_json}
    END_PARAMS

    cellassign-nf report \\
        ${annotated} \\
        --history ${history} \\
        --qc-summary ${qc_summary} \\
        --sample ${meta.id} \\
        --outdir report \\
        --params params.json \\
        --diagnostics ${diagnostics} \\
        --specificity ${specificity} \\
        ${args}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        cellassign-nf: \$(cellassign-nf --version 2>&1 | tail -n 1 | awk '{print \$NF}')
    END_VERSIONS
    """

    stub:
    """
    mkdir report
    touch report/${meta.id}.report.html report/${meta.id}_celltype_counts_mqc.tsv

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        cellassign-nf: ${workflow.manifest.version}
    END_VERSIONS
    """
}
