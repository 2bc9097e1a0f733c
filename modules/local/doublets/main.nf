process DOUBLETS {
    tag "${meta.id}"
    label 'process_medium'
    errorStrategy { SetAside.strategy(task, meta) }  // lib/SetAside.groovy

    input:
    tuple val(meta), path(h5ad, stageAs: 'input/*')

    output:
    tuple val(meta), path("${prefix}.doublets.tsv")        , emit: tsv
    tuple val(meta), path("${prefix}.doublet_summary.json"), emit: summary
    path "versions.yml"                                    , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    // --doublets, --expected-doublet-rate, ... come from conf/modules.config (ext.args)
    def args = task.ext.args ?: ''
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    export OMP_NUM_THREADS=${task.cpus} MKL_NUM_THREADS=${task.cpus} OPENBLAS_NUM_THREADS=${task.cpus}

    cellassign-nf doublets \\
        ${h5ad} \\
        -o ${prefix}.doublets.tsv \\
        --summary ${prefix}.doublet_summary.json \\
        ${args}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        cellassign-nf: \$(cellassign-nf --version 2>&1 | tail -n 1 | awk '{print \$NF}')
    END_VERSIONS
    """

    stub:
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    touch ${prefix}.doublets.tsv
    echo '{}' > ${prefix}.doublet_summary.json

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        cellassign-nf: ${workflow.manifest.version}
    END_VERSIONS
    """
}
