process PREDICT {
    tag "${meta.id}"
    label 'process_high'  // cpus, memory, time (conf/base.config)
    label 'process_gpu'   // the refit runs where training would (conf/gpu.config, conf/slurm.config)
    errorStrategy { SetAside.strategy(task, meta) }  // lib/SetAside.groovy

    input:
    tuple val(meta), path(h5ad), path(size_factors), path(design), path(doublets, stageAs: 'doublets/*')
    path model, stageAs: 'saved/*'  // the --model file, checked once by CHECK_MODEL

    output:
    tuple val(meta), path("${prefix}.model.pt")         , emit: model
    tuple val(meta), path("${prefix}.history.tsv")      , emit: history
    tuple val(meta), path("${prefix}.probabilities.tsv"), emit: probabilities
    tuple val(meta), path("${prefix}.model_info.json")  , emit: info
    path "versions.yml"                                 , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    // --refit, --device, --max-epochs, ... come from conf/modules.config (ext.args)
    def args = task.ext.args ?: ''
    // one doublet table per sample (several in cohort mode): their predicted doublets are not refitted
    def doubletTables = [doublets].flatten().collect { "--doublet-table ${it}" }.join(' ')
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    export OMP_NUM_THREADS=${task.cpus} MKL_NUM_THREADS=${task.cpus} OPENBLAS_NUM_THREADS=${task.cpus}

    cellassign-nf predict \\
        ${h5ad} \\
        --model ${model} \\
        --size-factors ${size_factors} \\
        --design ${design} \\
        -o ${prefix}.model.pt \\
        --history ${prefix}.history.tsv \\
        --probabilities ${prefix}.probabilities.tsv \\
        --model-info ${prefix}.model_info.json \\
        --threads ${task.cpus} \\
        ${doubletTables} \\
        ${args}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        cellassign-nf: \$(cellassign-nf --version 2>&1 | tail -n 1 | awk '{print \$NF}')
    END_VERSIONS
    """

    stub:
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    touch ${prefix}.model.pt ${prefix}.history.tsv ${prefix}.probabilities.tsv
    echo '{}' > ${prefix}.model_info.json

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        cellassign-nf: ${workflow.manifest.version}
    END_VERSIONS
    """
}
