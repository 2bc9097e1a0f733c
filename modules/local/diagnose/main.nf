process DIAGNOSE {
    tag "${meta.id}"
    label 'process_low'
    errorStrategy { SetAside.strategy(task, meta) }  // lib/SetAside.groovy

    input:
    tuple val(meta), path(annotated)
    path markers

    output:
    tuple val(meta), path("${prefix}.marker_diagnostics.tsv"), path("${prefix}.marker_specificity.tsv"), emit: tsv
    path "versions.yml"                                                                               , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    // thresholds (--max-overlap, --max-unassigned, ...) can be set with ext.args in a -c config
    def args = task.ext.args ?: ''
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    cellassign-nf diagnose \\
        ${annotated} \\
        --markers ${markers} \\
        -o ${prefix}.marker_diagnostics.tsv \\
        --specificity ${prefix}.marker_specificity.tsv \\
        ${args}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        cellassign-nf: \$(cellassign-nf --version 2>&1 | tail -n 1 | awk '{print \$NF}')
    END_VERSIONS
    """

    stub:
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    # the header of the real table: the workflow reads its rows (logDiagnostics)
    printf 'level\\tname\\tflag\\tseverity\\tmessage\\tmarkers\\tcandidates\\n' > ${prefix}.marker_diagnostics.tsv
    printf 'cell_type\\n' > ${prefix}.marker_specificity.tsv

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        cellassign-nf: ${workflow.manifest.version}
    END_VERSIONS
    """
}
