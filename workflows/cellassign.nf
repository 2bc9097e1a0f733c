/*
 * CELLASSIGN: QC -> doublets -> size factors -> design -> train -> annotate -> diagnose -> report -> MultiQC.
 *
 * The panel (--markers) is checked once by CHECK_PANEL, its Cell Ontology terms included; the
 * steps that read it wait for that check, and a panel it refuses stops the run.
 *
 * With --model, a saved model replaces the training: CHECK_MODEL checks it once (and --markers
 * against its panel), and PREDICT annotates every sample (or the cohort) with it, refitting the
 * batch's baseline (--refit batch) or as saved (--refit none). The later steps are the same.
 *
 * per_sample mode: every sample flows on its own (one model per sample); only
 *                  CELLTYPE_COUNTS and MULTIQC wait for all samples.
 * cohort mode:     the QC'd samples are merged, one model is fitted over all of them
 *                  with `sample` in the design, then every sample is annotated from
 *                  the cohort probabilities (annotate --sample NAME) and reported.
 *
 * Doublets are found in each sample on its own (DOUBLETS, before any merge: they exist only
 * within one library); their per-cell tables go to TRAIN / PREDICT (not fitted) and ANNOTATE
 * (labelled 'doublet').
 *
 * A sample whose step fails on its data is set aside (lib/SetAside.groovy): its later steps do
 * not run (in cohort mode, a sample set aside by QC is left out of the merge) and the others go
 * on. pipeline_info/samples.tsv and the MultiQC report list every sample's status.
 */

include { QC              } from '../modules/local/qc/main'
include { DOUBLETS        } from '../modules/local/doublets/main'
include { MERGE           } from '../modules/local/merge/main'
include { SIZE_FACTORS    } from '../modules/local/size_factors/main'
include { DESIGN          } from '../modules/local/design/main'
include { TRAIN           } from '../modules/local/train/main'
include { CHECK_PANEL     } from '../modules/local/check_panel/main'
include { CHECK_MODEL     } from '../modules/local/check_model/main'
include { PREDICT         } from '../modules/local/predict/main'
include { ANNOTATE        } from '../modules/local/annotate/main'
include { DIAGNOSE        } from '../modules/local/diagnose/main'
include { REPORT          } from '../modules/local/report/main'
include { CELLTYPE_COUNTS } from '../modules/local/celltype_counts/main'
include { MULTIQC         } from '../modules/local/multiqc/main'

import org.yaml.snakeyaml.Yaml
import org.yaml.snakeyaml.DumperOptions

/*
 * All versions.yml texts -> one YAML: {process: {tool: version}}, plus the workflow itself.
 */
def softwareVersionsYaml(List texts) {
    def merged = new TreeMap()
    texts.each { String text ->
        def parsed = new Yaml().load(text)
        if (parsed instanceof Map) {
            parsed.each { process, tools ->
                def simple = process.toString().tokenize(':')[-1]
                merged[simple] = tools instanceof Map ? new TreeMap(tools.collectEntries { k, v -> [k.toString(), v.toString()] }) : tools.toString()
            }
        }
    }
    merged['Workflow'] = [
        'Nextflow'     : workflow.nextflow.version.toString(),
        'cellassign-nf': workflow.manifest.version.toString(),
    ]
    def options = new DumperOptions()
    options.setDefaultFlowStyle(DumperOptions.FlowStyle.BLOCK)
    return new Yaml(options).dump(merged)
}

// A channel of versions.yml files -> one value: their softwareVersionsYaml
def collectVersions(ch_versions) {
    return ch_versions.map { f -> f.text }.unique().collect(sort: true).map { texts -> softwareVersionsYaml(texts) }
}

/*
 * One line per sample on the terminal: its marker-diagnostics warnings (columns of
 * marker_diagnostics.tsv: level, name, flag, severity, ...), or that there are none.
 */
def logDiagnostics(String sample, tsv) {
    def rows = tsv.readLines().drop(1)*.split('\t', -1).findAll { it.size() > 3 && it[3] == 'warning' }
    def where = "${params.outdir}/${sample}/${sample}.marker_diagnostics.tsv"
    if (rows) {
        def named = rows.take(4).collect { "${it[2]}: ${it[1]}" }.join('; ') + (rows.size() > 4 ? ' ...' : '')
        log.warn "${sample}: marker diagnostics: ${rows.size()} warning${rows.size() == 1 ? '' : 's'} (${named}); details in ${where}"
    } else {
        log.info "${sample}: marker diagnostics: no warnings"
    }
}

// The warnings a step wrote into its JSON, one sentence each, under one key: the QC summary's (the library
// as a whole looks damaged; cellassign_nf.keys.QC_WARNINGS_KEY) and the model description's of TRAIN or
// PREDICT (a type of the panel left out of the fit; cellassign_nf.keys.MODEL_WARNINGS_KEY)
def jsonWarnings(json) {
    return (new groovy.json.JsonSlurper().parseText(json.text)['warnings'] ?: [])*.toString()
}

// The doublet summary (cellassign_nf.doublets): [rate text for samples.tsv, note for the terminal, warnings]
def doubletSummary(summary) {
    def parsed = new groovy.json.JsonSlurper().parseText(summary.text)
    return [rate: parsed['rate_text']?.toString() ?: '', note: parsed['note']?.toString() ?: '',
            warnings: (parsed['warnings'] ?: [])*.toString()]
}

// A table cell: one line, no tabs
def cell(value) {
    return (value ?: '').toString().replaceAll(/[\t\r\n]+/, ' ').trim()
}

/*
 * Every sample's status, once all its steps have ended: `annotated` (it has a report) or `set
 * aside` (the step and the command's one-line reason), with its doublet rate, its QC warnings and
 * the warnings of the fit that labelled it.
 * Rows: maps with SetAside.COLUMNS as keys, in samplesheet order.
 */
def sampleStatus(List<String> samples, List<String> annotated, Map<String, List<String>> warnings,
                 Map<String, String> doublets, Map<String, List<String>> modelWarnings) {
    def setAside = SetAside.records().collectEntries { [it.sample, it] }
    return samples.collect { String sample ->
        def record = setAside[sample]
        [
            sample     : sample,
            status     : record ? SetAside.SET_ASIDE : sample in annotated ? SetAside.DONE : SetAside.NOT_FINISHED,
            step       : record?.step ?: '',
            reason     : record?.reason ?: '',
            doublets   : doublets[sample] ?: '',
            qc_warnings: (warnings[sample] ?: []).join(' | '),
            model_warnings: (modelWarnings[sample] ?: []).join(' | '),
        ]
    }
}

def sampleStatusTsv(List<Map> rows) {
    return ([SetAside.COLUMNS] + rows.collect { row -> SetAside.COLUMNS.collect { cell(row[it]) } })*.join('\t').join('\n') + '\n'
}

// The status table as a MultiQC custom-content section
def sampleStatusMultiqc(List<Map> rows) {
    def setAside = rows.count { it.status == SetAside.SET_ASIDE }
    def section = [
        id          : 'cellassign_nf_samples',
        section_name: 'Samples',
        description : setAside
            ? "${setAside} of ${rows.size()} samples were set aside: their step failed on their data (reason below); the other samples ran to the end. The list is also in pipeline_info/samples.tsv."
            : "All ${rows.size()} samples were annotated.",
        plot_type   : 'table',
        pconfig     : [id: 'cellassign_nf_samples_table', title: 'cellassign-nf: samples', namespace: 'cellassign-nf'],
        headers     : SetAside.COLUMNS.drop(1).collectEntries { [it, [title: it.replace('_', ' ')]] },
        data        : rows.collectEntries { row -> [row.sample, SetAside.COLUMNS.drop(1).collectEntries { [it, cell(row[it]) ?: '-'] }] },
    ]
    return groovy.json.JsonOutput.prettyPrint(groovy.json.JsonOutput.toJson(section)) + '\n'
}

workflow CELLASSIGN {
    take:
    ch_samples      // channel: [meta, counts]
    ch_markers      // value channel: markers file, or [] (--model without --markers)
    ch_model        // value channel: the --model file, or [] (train)
    ch_params_json  // value channel: JSON text of the parameters, for the reports

    main:
    ch_versions = Channel.empty()

    QC(ch_samples)
    ch_versions = ch_versions.mix(QC.out.versions)
    // doublets of each sample on its own, before any merge
    DOUBLETS(QC.out.h5ad)
    ch_versions = ch_versions.mix(DOUBLETS.out.versions)
    ch_doublets = DOUBLETS.out.summary.map { meta, summary -> [meta.id, doubletSummary(summary)] }
    ch_doublets.subscribe { sample, d -> log.info "${sample}: doublets: ${d.note}" }

    // [sample, its QC and doublet warnings], each summary read once: one terminal line per warning, and samples.tsv
    ch_qc_warnings = QC.out.summary.map { meta, summary -> [meta.id, jsonWarnings(summary)] }
        .join(ch_doublets)
        .map { sample, warnings, d -> [sample, warnings + d.warnings] }
    ch_qc_warnings.subscribe { sample, warnings -> warnings.each { log.warn "${sample}: QC: ${it}" } }

    if (params.mode == 'cohort') {
        // one model over all samples whose doublets are known, their doublet tables beside it
        ch_cohort_parts = QC.out.h5ad.join(DOUBLETS.out.tsv, failOnDuplicate: true)
            .map { _meta, h5ad, doublets -> [h5ad, doublets] }
            .toSortedList { a, b -> a[0].name <=> b[0].name }
            .filter { parts -> parts }
        def cohortMeta = [id: 'cohort', cohort: true]
        MERGE(ch_cohort_parts.map { parts -> [cohortMeta, parts.collect { it[0] }] })
        ch_versions = ch_versions.mix(MERGE.out.versions)
        ch_model_input = MERGE.out.h5ad
        ch_model_doublets = ch_cohort_parts.map { parts -> [cohortMeta, parts.collect { it[1] }] }
    } else {
        ch_model_input = QC.out.h5ad
        ch_model_doublets = DOUBLETS.out.tsv
    }

    // size factors and the design are small tables beside the counts, which no step copies
    SIZE_FACTORS(ch_model_input)
    ch_versions = ch_versions.mix(SIZE_FACTORS.out.versions)

    DESIGN(ch_model_input)
    ch_versions = ch_versions.mix(DESIGN.out.versions)

    // the joins by sample leave out a sample that one side lacks: it was set aside by that step
    ch_fit_input = ch_model_input
        .join(SIZE_FACTORS.out.tsv, failOnDuplicate: true)
        .join(DESIGN.out.design, failOnDuplicate: true)
        .join(ch_model_doublets, failOnDuplicate: true)
    def fitted  // TRAIN.out or PREDICT.out: the same outputs
    if (params.model) {
        // a saved model: checked once; its panel is what the diagnostics and reports read
        CHECK_MODEL(ch_model, ch_markers)
        ch_versions = ch_versions.mix(CHECK_MODEL.out.versions)
        ch_markers = CHECK_MODEL.out.panel
        PREDICT(ch_fit_input, ch_model)
        fitted = PREDICT.out
    } else {
        // the panel and its Cell Ontology terms, checked once: a bad panel stops the run here
        CHECK_PANEL(ch_markers)
        ch_versions = ch_versions.mix(CHECK_PANEL.out.versions)
        ch_markers = CHECK_PANEL.out.panel
        TRAIN(ch_fit_input, ch_markers)
        fitted = TRAIN.out
    }
    ch_versions = ch_versions.mix(fitted.versions)
    // the fit's warnings (a type of the panel left out: no marker gene in the data), one terminal line each
    fitted.info.subscribe { meta, info ->
        jsonWarnings(info).each { log.warn "${meta.id}: ${params.model ? 'PREDICT' : 'TRAIN'}: ${it}" }
    }

    if (params.mode == 'cohort') {
        // every sample: its own cells, the cohort's size factors, probabilities, history and model
        ch_cohort_fit = SIZE_FACTORS.out.tsv
            .join(fitted.probabilities)
            .join(fitted.info)
            .join(fitted.history)
            .map { _meta, size_factors, probabilities, info, history -> [size_factors, probabilities, info, history] }
        ch_per_sample = QC.out.h5ad.combine(ch_cohort_fit)
        ch_annotate_input = ch_per_sample.map { meta, h5ad, size_factors, probabilities, info, _history -> [meta, h5ad, size_factors, probabilities, info] }
            .join(DOUBLETS.out.tsv, failOnDuplicate: true)
            .join(DOUBLETS.out.summary, failOnDuplicate: true)
        ch_fit = ch_per_sample.map { meta, _h5ad, _size_factors, _probabilities, _info, history -> [meta, history] }
    } else {
        ch_annotate_input = QC.out.h5ad
            .join(SIZE_FACTORS.out.tsv, failOnDuplicate: true)
            .join(fitted.probabilities, failOnDuplicate: true)
            .join(fitted.info, failOnDuplicate: true)
            .join(DOUBLETS.out.tsv, failOnDuplicate: true)
            .join(DOUBLETS.out.summary, failOnDuplicate: true)
        ch_fit = fitted.history
    }

    // [sample, the warnings of the fit that labelled it] (cohort mode: the cohort model's, for every sample)
    ch_model_warnings = ch_annotate_input.map { meta, _h5ad, _size_factors, _probabilities, info, _doublets, _summary -> [meta.id, jsonWarnings(info)] }

    ANNOTATE(ch_annotate_input)
    ch_versions = ch_versions.mix(ANNOTATE.out.versions)

    // marker diagnostics of every sample's own cells (docs/markers.md)
    DIAGNOSE(ANNOTATE.out.h5ad, ch_markers)
    ch_versions = ch_versions.mix(DIAGNOSE.out.versions)
    DIAGNOSE.out.tsv.subscribe { meta, tsv, _specificity -> logDiagnostics(meta.id, tsv) }

    ch_report_input = ANNOTATE.out.h5ad
        .join(ch_fit, failOnDuplicate: true)
        .join(QC.out.summary, failOnDuplicate: true)
        .join(DIAGNOSE.out.tsv, failOnDuplicate: true)
    REPORT(ch_report_input, ch_params_json)
    ch_versions = ch_versions.mix(REPORT.out.versions)

    // samples x cell types, over all annotated samples
    CELLTYPE_COUNTS(
        REPORT.out.report
            .toSortedList { a, b -> a[0].id <=> b[0].id }
            .filter { items -> items }
            .map { items -> items.collect { _meta, dir -> dir } }
    )
    ch_versions = ch_versions.mix(CELLTYPE_COUNTS.out.versions)

    // every sample's status, once the last step of every sample has ended (REPORT waits for all others)
    ch_status = ch_samples.map { meta, _counts -> meta.id }.toList()
        .map { ids -> [samples: ids] }
        .combine(REPORT.out.report.map { meta, _dir -> meta.id }.toList().map { ids -> [annotated: ids] })
        .combine(ch_qc_warnings.toList().map { pairs -> [warnings: pairs.collectEntries()] })
        .combine(ch_doublets.toList().map { pairs -> [doublets: pairs.collectEntries { sample, d -> [sample, d.rate] }] })
        .combine(ch_model_warnings.toList().map { pairs -> [model_warnings: pairs.collectEntries()] })
        .map { a, b, c, d, e -> sampleStatus(a.samples, b.annotated, c.warnings, d.doublets, e.model_warnings) }
    ch_status.map { rows -> sampleStatusTsv(rows) }
        .collectFile(name: 'samples.tsv', storeDir: "${params.outdir}/pipeline_info")

    ch_multiqc_report = Channel.empty()
    if (!params.skip_multiqc) {
        // the software versions of every step, shown in the MultiQC report
        ch_mqc_versions = collectVersions(ch_versions).collectFile(name: 'cellassign_nf_software_mqc_versions.yml')
        ch_mqc_status = ch_status.map { rows -> sampleStatusMultiqc(rows) }.collectFile(name: 'cellassign_nf_samples_mqc.json')
        ch_multiqc_files = REPORT.out.mqc
            .map { _meta, files -> files }
            .flatten()
            .mix(ch_mqc_versions, ch_mqc_status)
            .collect(sort: { a, b -> a.name <=> b.name })
        MULTIQC(ch_multiqc_files, Channel.value(file(params.multiqc_config.toString())))
        ch_multiqc_report = MULTIQC.out.report
        ch_versions = ch_versions.mix(MULTIQC.out.versions)
    }

    // pipeline_info/software_versions.yml: every step, MultiQC, Nextflow and the pipeline
    collectVersions(ch_versions).collectFile(name: 'software_versions.yml', storeDir: "${params.outdir}/pipeline_info")

    emit:
    annotated       = ANNOTATE.out.h5ad
    predictions     = ANNOTATE.out.predictions
    model           = fitted.model
    celltype_counts = CELLTYPE_COUNTS.out.tsv
    multiqc_report  = ch_multiqc_report
}
