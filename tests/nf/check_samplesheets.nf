/*
 * Runs the samplesheet checks of the initialisation subworkflow on every file given
 * (comma-separated --sheets), catching each failure, and prints one line per file:
 *     RESULT <tab> <file name> <tab> OK <tab> <rows>     or
 *     RESULT <tab> <file name> <tab> ERROR <tab> <message>
 * One Nextflow start for all the cases (tests/test_samplesheet.py).
 */

include { readSamplesheet } from '../../subworkflows/local/pipeline_initialisation/main.nf'

workflow {
    params.sheets.toString().tokenize(',').each { String path ->
        def name = new File(path).name
        try {
            def rows = readSamplesheet(path)
            def shown = rows.collect { meta, counts -> "${meta.collect { k, v -> "${k}=${v}" }.join('&')}@${counts}" }
            println "RESULT\t${name}\tOK\t${shown.join(';')}"
        } catch (Throwable e) {
            def err = e  // the function's error() arrives wrapped (InvocationTargetException)
            while (err.message == null && err.cause != null) {
                err = err.cause
            }
            println "RESULT\t${name}\tERROR\t${err.message}"
        }
    }
}
