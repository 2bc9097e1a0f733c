process CHECK_MODEL {
    tag "${model.name}"
    label 'process_single'
    // no SetAside: a model file that is not one, or --markers that are not its panel, stops the run

    input:
    path model
    path markers  // [] without --markers

    output:
    path "${model.baseName}.panel.tsv", emit: panel
    path "versions.yml"               , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def check = markers ? "--markers ${markers}" : ''
    """
    cellassign-nf check-model \\
        ${model} \\
        --panel ${model.baseName}.panel.tsv \\
        ${check}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        cellassign-nf: \$(cellassign-nf --version 2>&1 | tail -n 1 | awk '{print \$NF}')
    END_VERSIONS
    """

    stub:
    """
    touch ${model.baseName}.panel.tsv

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        cellassign-nf: ${workflow.manifest.version}
    END_VERSIONS
    """
}
