process CHECK_PANEL {
    tag "${markers.name}"
    label 'process_single'
    // no SetAside: a panel that cannot be read, or a Cell Ontology term that is not current, stops the run

    input:
    path markers

    output:
    path markers, includeInputs: true    , emit: panel     // the file itself, checked once: TRAIN and DIAGNOSE read it
    path "${markers.baseName}.panel.txt" , emit: listing   // 'type [term]:genes' lines with the panel's header
    path "versions.yml"                  , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    """
    cellassign-nf markers show ${markers} > ${markers.baseName}.panel.txt

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        cellassign-nf: \$(cellassign-nf --version 2>&1 | tail -n 1 | awk '{print \$NF}')
    END_VERSIONS
    """

    stub:
    """
    touch ${markers.baseName}.panel.txt

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        cellassign-nf: ${workflow.manifest.version}
    END_VERSIONS
    """
}
