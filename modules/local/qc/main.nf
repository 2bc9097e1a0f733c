process QC {
    tag "${meta.id}"
    label 'process_low'
    errorStrategy { SetAside.strategy(task, meta) }  // lib/SetAside.groovy

    input:
    tuple val(meta), path(counts, stageAs: 'input/*')

    output:
    tuple val(meta), path("${prefix}.qc.h5ad")        , emit: h5ad
    tuple val(meta), path("${prefix}.qc_metrics.tsv") , emit: metrics
    tuple val(meta), path("${prefix}.qc_summary.json"), emit: summary
    path "versions.yml"                                , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    prefix = task.ext.prefix ?: "${meta.id}"
    // samplesheet columns beyond sample,counts become obs columns (sample-level covariates)
    def obs = meta.findAll { k, v -> k != 'id' && v != null && v.toString() != '' }
        .collect { k, v -> "--obs '${k}=${v.toString().replace("'", "")}'" }.join(' ')
    """
    cellassign-nf qc \\
        ${counts} \\
        -o ${prefix}.qc.h5ad \\
        --metrics ${prefix}.qc_metrics.tsv \\
        --summary ${prefix}.qc_summary.json \\
        --sample ${meta.id} \\
        ${obs} \\
        ${args}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        cellassign-nf: \$(cellassign-nf --version 2>&1 | tail -n 1 | awk '{print \$NF}')
    END_VERSIONS
    """

    stub:
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    touch ${prefix}.qc.h5ad ${prefix}.qc_metrics.tsv
    echo '{}' > ${prefix}.qc_summary.json

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        cellassign-nf: ${workflow.manifest.version}
    END_VERSIONS
    """
}
