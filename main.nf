#!/usr/bin/env nextflow
/*
 * cellassign-nf: CellAssign cell-type annotation for single-cell RNA-seq.
 *
 *   scripts/nextflow run . --input samplesheet.csv --markers markers.csv --outdir results
 *   scripts/nextflow run . -profile test --outdir results
 *   scripts/nextflow run . --input new_batch.csv --model results/sample1/sample1.model.pt --outdir results_new
 *
 * Every step is one `cellassign-nf` subcommand (docs/steps.md); docs/pipeline.md
 * describes the parameters, profiles and outputs.
 */

nextflow.enable.dsl = 2

include { PIPELINE_INITIALISATION; helpMessage } from './subworkflows/local/pipeline_initialisation'
include { CELLASSIGN                           } from './workflows/cellassign'

if (params.help) {
    log.info helpMessage("${projectDir}/nextflow_schema.json")
    exit 0
}

workflow {
    PIPELINE_INITIALISATION(params.input, params.markers ?: '')

    CELLASSIGN(
        PIPELINE_INITIALISATION.out.samples,
        PIPELINE_INITIALISATION.out.markers,
        PIPELINE_INITIALISATION.out.model,
        PIPELINE_INITIALISATION.out.params_json,
    )
}

workflow.onComplete {
    if (workflow.success) {
        log.info "cellassign-nf: done. Results in ${params.outdir}/ (per sample: <sample>/; MultiQC: multiqc/multiqc_report.html; run information: pipeline_info/)"
    } else {
        log.error "cellassign-nf: the run failed (${workflow.errorMessage ?: 'see the error above'}). Fix the cause and run again with -resume to reuse finished steps."
    }
    // the terminal ends with one line per sample set aside (lib/SetAside.groovy)
    def setAside = SetAside.records()
    if (setAside) {
        def exit = params.allow_failed_samples ? 'exit status 0 (--allow_failed_samples)' : 'exit status 1; --allow_failed_samples exits 0'
        log.warn "cellassign-nf: ${setAside.size()} sample${setAside.size() == 1 ? '' : 's'} set aside, listed in ${params.outdir}/pipeline_info/samples.tsv and the MultiQC report (${exit}). Fix the input and run again with -resume: the other samples' steps are reused."
    }
    setAside.each { log.warn "${it.sample}: set aside at ${it.step}: ${it.reason}" }
}
