process MULTIQC {
    label 'process_single'
    errorStrategy { SetAside.strategy(task, null) }  // lib/SetAside.groovy

    input:
    path multiqc_files, stageAs: 'inputs/?/*'
    path multiqc_config

    output:
    path "multiqc_report.html", emit: report
    path "multiqc_data"       , emit: data
    path "versions.yml"       , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    """
    multiqc \\
        --force \\
        --config ${multiqc_config} \\
        --filename multiqc_report.html \\
        ${args} \\
        inputs

    # the version this run wrote in its own data (`multiqc --version` would import MultiQC again: 0.8 s)
    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        multiqc: \$(sed -n 's/.*"config_version": *"\\([^"]*\\)".*/\\1/p' multiqc_data/multiqc_data.json | head -n 1)
    END_VERSIONS
    """

    stub:
    """
    mkdir multiqc_data
    touch multiqc_data/multiqc.log
    touch multiqc_report.html

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        multiqc: stub
    END_VERSIONS
    """
}
