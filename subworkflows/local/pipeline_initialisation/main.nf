/*
 * Checks the parameters and the samplesheet in plain Groovy, before any process
 * starts (no Nextflow plugin: plugins would be downloaded at run time).
 *
 * Every problem stops the run with one line naming the file (or parameter), the
 * row, the problem and the fix; no task is started.
 */

import groovy.json.JsonOutput
import groovy.json.JsonSlurper

// Sample names that would collide with the output folders
RESERVED_SAMPLE_NAMES = ['cohort', 'multiqc', 'pipeline_info']
REQUIRED_COLUMNS      = ['sample', 'counts']
COUNTS_EXTENSIONS     = ['.h5ad', '.h5']
// A counts folder that is not itself a matrix folder: where the counting tools put the filtered
// matrix, in order of preference (the same list as cellassign_nf.io.resolve_counts_path)
COUNTS_IN_FOLDER      = [
    'filtered_feature_bc_matrix.h5', 'outs/filtered_feature_bc_matrix.h5',
    'filtered_feature_bc_matrix', 'outs/filtered_feature_bc_matrix',
    'sample_filtered_feature_bc_matrix.h5', 'sample_filtered_feature_bc_matrix',
    'filtered_gene_bc_matrices_h5.h5', 'outs/filtered_gene_bc_matrices_h5.h5',
    'Solo.out/Gene/filtered', 'Gene/filtered',
]
MARKER_SUFFIXES       = ['.txt', '.csv', '.tsv', '.yaml', '.yml', '.json']

/*
 * Stop the run with one message (Nextflow prints it as "ERROR ~ <message>").
 */
def fail(String message) {
    error(message)
}

/*
 * The parameter definitions of nextflow_schema.json, flattened: name -> JSON schema.
 */
def schemaParameters(String schemaPath) {
    def schemaFile = file(schemaPath)
    if (!schemaFile.exists()) {
        return [:]
    }
    def schema = new JsonSlurper().parse(schemaFile.toFile())
    def result = [:]
    def groups = (schema['$defs'] ?: schema['definitions'] ?: [:]) as Map
    groups.each { _name, group -> (group['properties'] ?: [:]).each { k, v -> result[k] = v } }
    (schema['properties'] ?: [:]).each { k, v -> result[k] = v }
    return result
}

def requiredParameters(String schemaPath) {
    def schemaFile = file(schemaPath)
    if (!schemaFile.exists()) {
        return []
    }
    def schema = new JsonSlurper().parse(schemaFile.toFile())
    def groups = (schema['$defs'] ?: schema['definitions'] ?: [:]) as Map
    def required = []
    groups.each { _name, group -> required.addAll(group['required'] ?: []) }
    required.addAll(schema['required'] ?: [])
    return required.unique()
}

def isInteger(value) {
    return value instanceof Integer || value instanceof Long || value instanceof BigInteger ||
        (value instanceof BigDecimal && value.stripTrailingZeros().scale() <= 0)
}

/*
 * --help: every parameter of nextflow_schema.json, by group.
 */
def helpMessage(String schemaPath) {
    def schema = new JsonSlurper().parse(file(schemaPath).toFile())
    def groups = (schema['$defs'] ?: schema['definitions'] ?: [:]) as Map
    def lines = []
    lines << "cellassign-nf ${workflow.manifest.version}: ${workflow.manifest.description}"
    lines << ''
    lines << 'Usage:'
    lines << '  scripts/nextflow run . --input samplesheet.csv --markers markers.csv --outdir results [-profile docker,gpu]'
    lines << '  scripts/nextflow run . -profile test --outdir results'
    groups.each { _name, group ->
        lines << ''
        lines << "${group.title}:"
        (group.properties ?: [:]).each { String name, Map spec ->
            if (spec.hidden) {
                return
            }
            def type = spec.type ?: 'string'
            def dflt = spec.containsKey('default') ? " [default: ${spec.default}]" : ''
            def req  = (group.required ?: []).contains(name) ? ' (required)' : ''
            lines << "  --${name.padRight(22)} ${type.padRight(8)} ${spec.description ?: ''}${req}${dflt}"
        }
    }
    lines << ''
    lines << 'Profiles: test, docker, apptainer, singularity, gpu, awsbatch, slurm, debug (combine with commas: -profile docker,gpu).'
    lines << 'Details: docs/pipeline.md'
    return lines.join('\n')
}

/*
 * Parameter types, ranges and choices from nextflow_schema.json, plus the rules
 * between parameters. Unknown parameters give a warning (a typo is not fatal).
 */
def validateParameters(Map params, String schemaPath) {
    def spec = schemaParameters(schemaPath)
    if (!spec) {
        fail("nextflow_schema.json not found at ${schemaPath}. Restore it from the pipeline repository.")
    }
    requiredParameters(schemaPath).each { String name ->
        if (params[name] == null || params[name].toString().trim() == '' || params[name] == true) {
            fail("Parameter --${name} is required: ${spec[name]?.description ?: ''} Give it on the command line (--${name} VALUE) or use -profile test.")
        }
    }
    params.each { String name, value ->
        def s = spec[name]
        if (s == null) {
            // Nextflow also stores kebab-case params in camelCase: check only the form given
            def snake = name.replaceAll(/([A-Z])/) { '_' + it[0].toLowerCase() }
            if (!spec[snake] && !spec[name.replace('-', '_')]) {
                log.warn "Unknown parameter --${name}: ignored. See --help for the parameters."
            }
            return
        }
        if (value == null) {
            return
        }
        def types = s.type instanceof List ? s.type : [s.type ?: 'string']
        def ok = types.any { String t ->
            switch (t) {
                case 'integer': return isInteger(value)
                case 'number' : return value instanceof Number
                case 'boolean': return value instanceof Boolean
                case 'string' : return !(value instanceof Boolean)
                case 'null'   : return value == null
                default       : return true
            }
        }
        if (!ok) {
            def wanted = types.collect { it == 'integer' ? 'an integer' : it == 'number' ? 'a number' : it == 'boolean' ? 'true or false' : 'a text' }.join(' or ')
            fail("Parameter --${name}: '${value}' is not ${wanted}. Give ${wanted}${types.contains('boolean') ? ' (or just --' + name + ')' : ''}.")
        }
        if (s.enum && !(value.toString() in s.enum*.toString())) {
            fail("Parameter --${name}: '${value}' is not one of ${s.enum.join(', ')}. Give one of those.")
        }
        if (value instanceof Number) {
            if (s.minimum != null && value < s.minimum) {
                fail("Parameter --${name}: ${value} is below the minimum ${s.minimum}. Give a value >= ${s.minimum}.")
            }
            if (s.maximum != null && value > s.maximum) {
                fail("Parameter --${name}: ${value} is above the maximum ${s.maximum}. Give a value <= ${s.maximum}.")
            }
            if (s.exclusiveMinimum != null && value <= s.exclusiveMinimum) {
                fail("Parameter --${name}: ${value} must be greater than ${s.exclusiveMinimum}. Give a larger value.")
            }
            if (s.exclusiveMaximum != null && value >= s.exclusiveMaximum) {
                fail("Parameter --${name}: ${value} must be less than ${s.exclusiveMaximum}. Give a smaller value.")
            }
        }
        if (s.pattern && value instanceof CharSequence && !(value.toString() ==~ s.pattern)) {
            fail("Parameter --${name}: '${value}' does not match ${s.pattern}. ${s.help_text ?: s.description ?: ''}")
        }
    }

    // Rules between parameters
    if (params.covariates && params.design_formula) {
        fail("Parameters --covariates and --design_formula were both given. Give one of them: --covariates batch,donor or --design_formula '~ batch + donor'.")
    }
    if (params.covariates) {
        def bad = params.covariates.toString().tokenize(',')*.trim().findAll { !(it ==~ /[A-Za-z_][A-Za-z0-9_.]*/) }
        if (bad) {
            fail("Parameter --covariates: '${bad[0]}' is not a column name. Give comma-separated obs column names, e.g. --covariates batch,donor.")
        }
    }
    if (params.design_formula && !params.design_formula.toString().trim().startsWith('~')) {
        fail("Parameter --design_formula: '${params.design_formula}' is not a formula. Give one that starts with '~', e.g. --design_formula '~ batch + donor'.")
    }
    def markers = resolveMarkers(params.markers.toString())
    if (markers == null) {
        fail("Parameter --markers: file ${file(params.markers.toString())} does not exist and '${params.markers}' is not a bundled panel (${bundledPanels().join(', ') ?: 'none'}). Give the marker table (CSV/TSV genes x types, YAML/JSON {type: [genes]}, .txt type:gene,gene lines) or a bundled panel's name.")
    }
    if (markers.isDirectory()) {
        fail("Parameter --markers: ${markers} is a folder. Give the marker table file (CSV/TSV genes x types, or YAML/JSON {type: [genes]}).")
    }
    if (!params.skip_multiqc && params.multiqc_config && !file(params.multiqc_config.toString()).exists()) {
        fail("Parameter --multiqc_config: file ${params.multiqc_config} does not exist. Give a MultiQC config file or leave the parameter out.")
    }
    if (workflow.profile.tokenize(',').contains('awsbatch')) {
        if (!workflow.workDir.toUriString().startsWith('s3://')) {
            fail("Profile awsbatch: the work directory ${workflow.workDir} is not on S3. Give -work-dir s3://BUCKET/work (or -bucket-dir s3://BUCKET/work).")
        }
        if (!params.outdir.toString().startsWith('s3://')) {
            log.warn "Profile awsbatch: --outdir ${params.outdir} is not on S3; results are copied to the machine running Nextflow."
        }
    }
}

/*
 * --markers: a file, or the name of a bundled panel (assets/markers/NAME.txt, ...); null if neither.
 */
def resolveMarkers(String value) {
    def given = file(value)
    if (given.exists()) {
        return given
    }
    if (value ==~ /[A-Za-z0-9_.-]+/) {
        def bundled = MARKER_SUFFIXES.collect { file("${projectDir}/assets/markers/${value}${it}") }.find { it.exists() }
        if (bundled) {
            return bundled.toRealPath()  // assets/markers is a link into src/: stage the file itself
        }
    }
    return null
}

def bundledPanels() {
    def dir = new File("${projectDir}/assets/markers").canonicalFile  // a link into src/cellassign_nf/panels
    def names = dir.isDirectory() ? (dir.list() as List) : []
    return names.findAll { String n -> MARKER_SUFFIXES.any { n.endsWith(it) } }.collect { String n -> n.take(n.lastIndexOf('.')) }.sort()
}

def isMatrixFolder(folder) {
    return folder.isDirectory() && ['matrix.mtx.gz', 'matrix.mtx'].any { folder.resolve(it).exists() }
}

/*
 * A counts folder from the samplesheet -> the file (or matrix folder) to read: the folder itself
 * when it holds matrix.mtx(.gz), else the filtered matrix of a Cell Ranger (run folder, outs/),
 * Cell Ranger multi or STARsolo output folder. The choice is logged; no match stops the run.
 */
def resolveCountsFolder(counts, String at, String sample, String countsText) {
    if (!counts.isDirectory() || isMatrixFolder(counts)) {
        return counts
    }
    for (String rel : COUNTS_IN_FOLDER) {
        def cand = counts.resolve(rel)
        if (rel.endsWith('.h5') ? (cand.exists() && !cand.isDirectory()) : isMatrixFolder(cand)) {
            log.info "Sample '${sample}': counts folder ${counts} is Cell Ranger/STARsolo output; using ${cand}"
            return cand
        }
    }
    def multi = file("${counts}/outs/per_sample_outs/*/count/sample_filtered_feature_bc_matrix.h5", type: 'file') as List
    if (multi.size() == 1) {
        log.info "Sample '${sample}': counts folder ${counts} is Cell Ranger multi output; using ${multi[0]}"
        return multi[0]
    }
    def why = multi ? "Cell Ranger multi output with ${multi.size()} samples" : 'no matrix.mtx(.gz) and no Cell Ranger/STARsolo filtered matrix'
    fail("${at}: counts folder '${countsText}' of sample '${sample}' holds ${why} (looked for matrix.mtx(.gz), outs/filtered_feature_bc_matrix(.h5), Solo.out/Gene/filtered). Point to the sample's Cell Ranger outs/ folder, its filtered_feature_bc_matrix folder or .h5 file, or an .h5ad file.")
}

/*
 * Split one CSV/TSV line; double quotes may wrap a field ("" is a quote inside one).
 */
def splitLine(String line, String sep) {
    def fields = []
    def cur = new StringBuilder()
    boolean quoted = false
    int i = 0
    while (i < line.length()) {
        char ch = line.charAt(i)
        if (quoted) {
            if (ch == '"' as char) {
                if (i + 1 < line.length() && line.charAt(i + 1) == '"' as char) {
                    cur.append('"')
                    i++
                } else {
                    quoted = false
                }
            } else {
                cur.append(ch)
            }
        } else if (ch == '"' as char) {
            quoted = true
        } else if (line.substring(i).startsWith(sep)) {
            fields << cur.toString().trim()
            cur = new StringBuilder()
        } else {
            cur.append(ch)
        }
        i++
    }
    fields << cur.toString().trim()
    return fields
}

/*
 * Read and check the samplesheet: columns `sample,counts[,covariate columns...]`.
 * Returns [[id: sample, <covariate>: value, ...], countsPath] for every row.
 */
def readSamplesheet(String input) {
    def sheet = file(input)
    def where = "Samplesheet ${sheet}"
    if (!sheet.exists()) {
        fail("${where}: file does not exist. Give the path of a CSV with columns sample,counts[,metadata...] to --input.")
    }
    if (sheet.isDirectory()) {
        fail("${where}: is a folder. Give the path of a CSV file with columns sample,counts[,metadata...] to --input.")
    }
    def sep = sheet.name.toLowerCase().endsWith('.tsv') ? '\t' : ','
    def lines = sheet.readLines()
    if (lines && lines[0].startsWith('\uFEFF')) {
        lines[0] = lines[0].substring(1)
    }
    // [line number, text] of the lines that are not empty and not comments
    def numbered = []
    lines.eachWithIndex { String text, int idx ->
        if (text.trim() && !text.trim().startsWith('#')) {
            numbered << [idx + 1, text]
        }
    }
    if (!numbered) {
        fail("${where}: the file is empty. Write a header line 'sample,counts' and one line per sample.")
    }
    def headerLine = numbered[0][0]
    def header = splitLine(numbered[0][1], sep)
    header.eachWithIndex { String name, int idx ->
        if (!name) {
            fail("${where}, line ${headerLine}: column ${idx + 1} of the header has no name. Name it, or remove the empty column (e.g. a trailing '${sep == ',' ? ',' : 'tab'}').")
        }
        if (!(name ==~ /[A-Za-z_][A-Za-z0-9_.]*/)) {
            fail("${where}, line ${headerLine}: unknown column '${name}'. Column names are 'sample', 'counts' and covariate names made of letters, digits, '_' and '.'.")
        }
        if (header.count(name) > 1) {
            fail("${where}, line ${headerLine}: column '${name}' appears twice. Keep one column of each name.")
        }
    }
    REQUIRED_COLUMNS.each { String name ->
        if (!header.contains(name)) {
            fail("${where}, line ${headerLine}: missing column '${name}' (header is '${header.join(sep)}'). The header must have the columns sample,counts[,metadata...].")
        }
    }
    if (numbered.size() < 2) {
        fail("${where}: no samples, only the header line. Add one line per sample: name,path-to-counts.")
    }

    def seen = [:]
    def rows = []
    numbered.drop(1).each { item ->
        def (int lineNo, String text) = item
        def fields = splitLine(text, sep)
        def at = "${where}, line ${lineNo}"
        if (fields.size() > header.size()) {
            fail("${at}: ${fields.size()} values for ${header.size()} columns (unknown column ${header.size() + 1}, value '${fields[header.size()]}'). Remove the extra value or name its column in the header.")
        }
        if (fields.size() < header.size()) {
            fail("${at}: ${fields.size()} values for ${header.size()} columns (missing column '${header[fields.size()]}'). Give one value per header column.")
        }
        def row = [header, fields].transpose().collectEntries { it }
        def sample = row.sample
        if (!sample) {
            fail("${at}: the sample name is empty. Give every row a sample name.")
        }
        if (!(sample ==~ /[A-Za-z0-9][A-Za-z0-9_.-]*/)) {
            fail("${at}: sample name '${sample}' has characters other than letters, digits, '_', '.', '-' (or starts with one of the last three). Rename the sample, e.g. '${sample.replaceAll(/[^A-Za-z0-9_.-]/, '_').replaceAll(/^[_.-]+/, '') ?: 'sample1'}'.")
        }
        if (sample.toLowerCase() in RESERVED_SAMPLE_NAMES) {
            fail("${at}: sample name '${sample}' is reserved for an output folder (${RESERVED_SAMPLE_NAMES.join(', ')}). Rename the sample.")
        }
        if (seen.containsKey(sample)) {
            fail("${at}: duplicate sample '${sample}' (also on line ${seen[sample]}). Give every sample a unique name, or merge the two rows.")
        }
        seen[sample] = lineNo
        def countsText = row.counts
        if (!countsText) {
            fail("${at}: the counts path of sample '${sample}' is empty. Give the path of its h5ad, 10x .h5 file or 10x matrix folder.")
        }
        def counts = (countsText ==~ /^[a-zA-Z][a-zA-Z0-9+.-]*:\/\/.*/ || countsText.startsWith('/')) ?
            file(countsText) : file(sheet.parent.resolve(countsText).normalize().toString())
        if (!counts.exists()) {
            fail("${at}: counts file '${countsText}' of sample '${sample}' does not exist (looked for ${counts}). Fix the path; relative paths are read from the samplesheet's folder ${sheet.parent}.")
        }
        if (!counts.isDirectory() && !COUNTS_EXTENSIONS.any { counts.name.toLowerCase().endsWith(it) }) {
            fail("${at}: counts file '${countsText}' of sample '${sample}' is not an .h5ad, a 10x .h5 file or a 10x matrix folder. Convert it to .h5ad or give the 10x output.")
        }
        counts = resolveCountsFolder(counts, at, sample, countsText)
        def meta = [id: sample]
        header.findAll { !(it in REQUIRED_COLUMNS) }.each { String col -> meta[col] = row[col] }
        rows << [meta, counts]
    }
    return rows
}

/*
 * Containers: every image the tasks will use must be there before the first task starts.
 * docker: present locally, or pullable; apptainer / singularity: a .sif that exists, or a
 * name they can pull (a bare local Docker name like cellassign-nf:0.1.0 is not one).
 * Otherwise one line: the image and the command that builds it.
 */
CONTAINER_BUILD_COMMAND = 'scripts/build-images'

// [exit status, the last non-empty line the command wrote to stdout or stderr]. One pipe for both
// streams, read by one thread that is joined before the text is used: two threads appending to one
// buffer corrupted it, and reading it before they finished lost its last lines.
def runCommand(List<String> command, long timeoutMs) {
    def out = new StringBuilder()
    def proc
    try {
        proc = new ProcessBuilder(command).redirectErrorStream(true).start()
    } catch (IOException e) {
        return [127, "${command[0]}: command not found"]
    }
    def reader = proc.consumeProcessOutputStream(out)
    proc.waitForOrKill(timeoutMs)
    reader.join(timeoutMs)
    return [proc.exitValue(), out.toString().trim().readLines().findAll { it.trim() }.with { it ? it[-1] : '' }]
}

def containerImages() {
    def images = workflow.container instanceof Map ? workflow.container.values() : [workflow.container]
    return images.findAll { it }*.toString().unique()
}

def isLocalDockerName(String image) {
    // no registry, no user: docker.io/library/<name>, where this pipeline's image is never published
    return !image.contains('://') && !image.contains('/')
}

def checkContainerImages() {
    def engine = workflow.containerEngine
    def images = containerImages()
    if (engine == 'docker') {
        def (int rc, String why) = runCommand(['docker', 'version', '--format', '{{.Server.Version}}'], 60_000)
        if (rc != 0) {
            fail("Profile docker: the Docker daemon does not answer (${why}). Start it (systemctl start docker, or dockerd as root) and run again.")
        }
        images.each { image ->
            if (runCommand(['docker', 'image', 'inspect', image], 60_000)[0] == 0) {
                return
            }
            def (int pullRc, String pullWhy) = runCommand(['docker', 'pull', '-q', image], 1_800_000)
            if (pullRc != 0) {
                fail("Container image ${image} is not here and docker cannot pull it (${pullWhy}). Build it with: ${CONTAINER_BUILD_COMMAND} (or give --container_image with an image you have).")
            }
        }
    } else if (engine in ['apptainer', 'singularity']) {
        images.each { image ->
            def local = image.startsWith('/') || image.startsWith('./') || image.endsWith('.sif') || image.endsWith('.img')
            if (local && !file(image).exists()) {
                fail("Container image ${image} (${engine}) does not exist. Build it with: ${CONTAINER_BUILD_COMMAND} && ${engine} build ${file(image).name} docker-daemon://cellassign-nf:${workflow.manifest.version}, then give --container_image /path/to/${file(image).name}.")
            }
            if (!local && isLocalDockerName(image)) {
                fail("Container image ${image} is a local Docker name that ${engine} cannot pull. Build the .sif with: ${CONTAINER_BUILD_COMMAND} && ${engine} build cellassign-nf_${workflow.manifest.version}.sif docker-daemon://${image}, then give --container_image /path/to/cellassign-nf_${workflow.manifest.version}.sif.")
            }
        }
    }
}

/*
 * The parameters shown in every report (those that change the results).
 */
def reportParameters(Map params) {
    def keys = [
        'mode', 'covariates', 'design_formula', 'layer', 'min_counts', 'min_genes', 'max_mito_pct',
        'min_cells', 'mito_prefix', 'max_epochs', 'learning_rate', 'batch_size', 'n_restarts', 'seed',
        'validation_fraction', 'patience', 'min_delta', 'other', 'device', 'min_prob',
    ]
    def out = [pipeline: 'cellassign-nf', pipeline_version: workflow.manifest.version?.toString(),
               markers: (resolveMarkers(params.markers.toString()) ?: file(params.markers.toString())).name]
    keys.each { k -> out[k] = params[k] instanceof Number || params[k] instanceof Boolean || params[k] == null ? params[k] : params[k].toString() }
    return JsonOutput.toJson(out)
}

workflow PIPELINE_INITIALISATION {
    take:
    input       // string: --input
    markers     // string: --markers

    main:
    def schemaPath = "${projectDir}/nextflow_schema.json"
    if (params.validate_params != false) {
        validateParameters(params, schemaPath)
    }
    def rows = readSamplesheet(input.toString())
    checkContainerImages()
    log.info "cellassign-nf ${workflow.manifest.version}: ${rows.size()} sample(s) [${rows.collect { it[0].id }.join(', ')}], mode ${params.mode}, outdir ${params.outdir}"
    ch_samples = Channel.fromList(rows)
    def markersFile = resolveMarkers(markers.toString()) ?: file(markers.toString())
    if (markersFile.toString() != file(markers.toString()).toString()) {
        log.info "Markers: bundled panel '${markers}' (${markersFile})"
    }
    ch_markers = Channel.value(markersFile)
    ch_params_json = Channel.value(reportParameters(params))

    emit:
    samples     = ch_samples      // [meta, counts]
    markers     = ch_markers      // path
    params_json = ch_params_json  // JSON text for the reports
}
