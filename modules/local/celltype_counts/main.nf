process CELLTYPE_COUNTS {
    label 'process_single'
    errorStrategy { SetAside.strategy(task, null) }  // lib/SetAside.groovy

    input:
    path report_dirs, stageAs: 'reports/?/*'

    output:
    path "celltype_counts.tsv", emit: tsv
    path "versions.yml"       , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    """
    cellassign-nf cohort-table \\
        ${report_dirs} \\
        -o celltype_counts.tsv \\
        ${args}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        cellassign-nf: \$(cellassign-nf --version 2>&1 | tail -n 1 | awk '{print \$NF}')
    END_VERSIONS
    """

    stub:
    """
    touch celltype_counts.tsv

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        cellassign-nf: ${workflow.manifest.version}
    END_VERSIONS
    """
}
