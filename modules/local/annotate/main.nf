process ANNOTATE {
    tag "${meta.id}"
    label 'process_low'
    errorStrategy { SetAside.strategy(task, meta) }  // lib/SetAside.groovy

    input:
    tuple val(meta), path(h5ad, stageAs: 'input/*'), path(size_factors), path(probabilities), path(model_info), path(doublets), path(doublet_summary)

    output:
    tuple val(meta), path("${prefix}.annotated.h5ad") , emit: h5ad
    tuple val(meta), path("${prefix}.predictions.tsv"), emit: predictions
    path "versions.yml"                               , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    // --min-prob (and --sample NAME in cohort mode) come from conf/modules.config (ext.args)
    def args = task.ext.args ?: ''
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    cellassign-nf annotate \\
        ${h5ad} \\
        --probabilities ${probabilities} \\
        --size-factors ${size_factors} \\
        --model-info ${model_info} \\
        --doublet-table ${doublets} \\
        --doublet-summary ${doublet_summary} \\
        -o ${prefix}.annotated.h5ad \\
        --predictions ${prefix}.predictions.tsv \\
        ${args}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        cellassign-nf: \$(cellassign-nf --version 2>&1 | tail -n 1 | awk '{print \$NF}')
    END_VERSIONS
    """

    stub:
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    touch ${prefix}.annotated.h5ad ${prefix}.predictions.tsv

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        cellassign-nf: ${workflow.manifest.version}
    END_VERSIONS
    """
}
