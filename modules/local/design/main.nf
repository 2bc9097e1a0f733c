process DESIGN {
    tag "${meta.id}"
    label 'process_single'
    errorStrategy { SetAside.strategy(task, meta) }  // lib/SetAside.groovy

    input:
    tuple val(meta), path(h5ad)

    output:
    tuple val(meta), path("${prefix}.design.tsv"), emit: design
    path "versions.yml"                          , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    // covariates / formula come from conf/modules.config (ext.args)
    def args = task.ext.args ?: ''
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    cellassign-nf design \\
        ${h5ad} \\
        -o ${prefix}.design.tsv \\
        ${args}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        cellassign-nf: \$(cellassign-nf --version 2>&1 | tail -n 1 | awk '{print \$NF}')
    END_VERSIONS
    """

    stub:
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    touch ${prefix}.design.tsv

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        cellassign-nf: ${workflow.manifest.version}
    END_VERSIONS
    """
}
